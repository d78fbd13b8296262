"""Which GPU a worker runs on: ``--device cpu | cuda | cuda:N | auto``.

``auto`` leases a GPU that no other worker on this host holds: one lock file per GPU under a lease
directory, held with ``flock`` for the life of the process.  The kernel drops a flock when its
process exits, however it exits (SIGKILL, OOM), so a dead worker never leaves a stale lease.
Workers given ``cuda:N`` take a shared lock on N, so ``auto`` workers step around them, while two
explicit workers may still share a GPU on purpose (each with its ``--gpu-memory-utilization``).

Pure bookkeeping, no torch: the caller passes the device count (``torch.cuda.device_count()``,
which does not create a CUDA context, so leasing happens before any memory lands on GPU 0).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from loraplex.errors import LoraplexError

log = logging.getLogger(__name__)

_CUDA_N = re.compile(r"cuda:(\d+)")


class DeviceConfigError(LoraplexError):
    """``--device`` names a device this host does not have, or no GPU is left to lease."""


@dataclass
class GpuLease:
    """A held lock on one GPU; released by ``release()`` or when the process exits."""

    index: int  # the CUDA ordinal in this process (what ``cuda:N`` means here)
    gpu_id: str  # the GPU as the lease directory names it (physical, see physical_ids)
    path: Path
    exclusive: bool
    _fd: int | None

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def physical_ids(device_count: int, cuda_visible_devices: str | None) -> list[str]:
    """Name each visible GPU as the host does, so that workers with different
    ``CUDA_VISIBLE_DEVICES`` (both "2,3" and "3") agree on which lease file is which GPU."""
    if cuda_visible_devices:
        listed = [d.strip() for d in cuda_visible_devices.split(",") if d.strip()]
        if len(listed) >= device_count:
            return listed[:device_count]
    return [str(i) for i in range(device_count)]


def _lock(path: Path, exclusive: bool) -> int | None:
    """The open, flocked descriptor of ``path``; None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _note_holder(fd: int, holder: str) -> None:
    # For people reading the directory (`cat gpu-1.lock`); the lock itself is the flock.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder} pid={os.getpid()}\n".encode(), 0)


def _lease_path(lease_dir: Path, gpu_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", gpu_id)
    return lease_dir / f"gpu-{safe}.lock"


def acquire_free_gpu(
    device_count: int,
    lease_dir: str | Path,
    cuda_visible_devices: str | None = None,
    holder: str = "",
) -> GpuLease:
    """Lease the first GPU no other worker holds (exclusively); DeviceConfigError if none."""
    lease_dir = Path(lease_dir)
    ids = physical_ids(device_count, cuda_visible_devices)
    for index, gpu_id in enumerate(ids):
        path = _lease_path(lease_dir, gpu_id)
        try:
            lease_dir.mkdir(parents=True, exist_ok=True)
            fd = _lock(path, exclusive=True)
        except OSError as e:
            raise DeviceConfigError(
                f"--device auto: cannot write the lease file {path} ({e.strerror}); "
                "give --gpu-lease-dir a writable directory shared by this host's workers"
            ) from e
        if fd is not None:
            _note_holder(fd, holder)
            return GpuLease(index, gpu_id, path, True, fd)
    raise DeviceConfigError(
        f"--device auto: all {device_count} GPU(s) of this host are leased by other workers "
        f"(lease files in {lease_dir}); run fewer workers, or give --device cuda:N to share one"
    )


def lease_explicit_gpu(
    index: int,
    device_count: int,
    lease_dir: str | Path,
    cuda_visible_devices: str | None = None,
    holder: str = "",
) -> GpuLease | None:
    """Mark ``cuda:index`` as used (shared lock) so ``auto`` workers avoid it; None (and a
    warning) when an ``auto`` worker already holds it: the user asked for it, so we share."""
    lease_dir = Path(lease_dir)
    gpu_id = physical_ids(device_count, cuda_visible_devices)[index]
    path = _lease_path(lease_dir, gpu_id)
    try:
        lease_dir.mkdir(parents=True, exist_ok=True)
        fd = _lock(path, exclusive=False)
    except OSError as e:  # advisory only for an explicit device: run without it
        log.warning("no GPU lease for cuda:%d (%s: %s)", index, path, e.strerror)
        return None
    if fd is None:
        log.warning("cuda:%d is leased by an --device auto worker; sharing it as asked", index)
        return None
    return GpuLease(index, gpu_id, path, False, fd)


def check_device(spec: str | None, device_count: int) -> str | None:
    """Validate ``--device`` against the GPUs this process sees; the device it means, with
    ``auto`` left for the caller to lease.  None stays None (the engine's default)."""
    if spec is None or spec in ("cpu", "auto"):
        return spec
    if spec == "cuda":
        if device_count == 0:
            raise DeviceConfigError("--device cuda: no CUDA device is visible to this process")
        return spec
    m = _CUDA_N.fullmatch(spec)
    if m is None:
        raise DeviceConfigError(f"--device {spec!r}: use cpu, cuda, cuda:N or auto")
    n = int(m.group(1))
    if n >= device_count:
        seen = f"cuda:0..cuda:{device_count - 1}" if device_count else "none"
        raise DeviceConfigError(
            f"--device {spec}: this process sees {device_count} CUDA device(s) ({seen})"
        )
    return spec


def place_worker(
    spec: str | None,
    device_count: int,
    lease_dir: str | Path,
    cuda_visible_devices: str | None = None,
    holder: str = "",
) -> tuple[str | None, GpuLease | None]:
    """(device for the engine, lease to keep for the life of the process)."""
    device = check_device(spec, device_count)
    if device == "auto":
        if device_count == 0:
            log.info("--device auto: no CUDA device visible, running on the CPU")
            return "cpu", None
        lease = acquire_free_gpu(device_count, lease_dir, cuda_visible_devices, holder)
        log.info("--device auto: leased %s (GPU %s, %s)", lease.device, lease.gpu_id, lease.path)
        return lease.device, lease
    if device == "cpu" or device_count == 0:
        return device, None
    # cuda:N, and cuda or the default (both the current device, GPU 0): a shared lease.
    m = _CUDA_N.fullmatch(device or "")
    index = int(m.group(1)) if m else 0
    return device, lease_explicit_gpu(index, device_count, lease_dir, cuda_visible_devices, holder)
