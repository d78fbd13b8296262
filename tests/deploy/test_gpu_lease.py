"""--device auto: workers of one host lease separate GPUs (flock, CPU-only test).

The workers are real processes (``python -c`` holding a lease until their stdin closes), so the
test exercises the cross-process locks that several containers sharing the lease directory use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraplex.worker.gpu_lease import (
    DeviceConfigError,
    acquire_free_gpu,
    check_device,
    physical_ids,
    place_worker,
)
from loraplex.worker.settings import build_parser, settings_from_args

HOLD = """
import sys
from loraplex.worker.gpu_lease import place_worker
try:
    device, lease = place_worker("auto", int(sys.argv[1]), sys.argv[2])
except Exception as e:
    print("ERROR", e, flush=True)
    sys.exit(2)
print(device, flush=True)
sys.stdin.read()  # hold the lease until the test closes stdin (or kills us)
"""


class Worker:
    def __init__(self, gpus: int, lease_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(gpus), str(lease_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.device = self.proc.stdout.readline().strip()  # type: ignore[union-attr]

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=30)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.stop(kill=True)


def test_scale_decode_3_on_a_4_gpu_host_gets_separate_gpus(tmp_path, workers) -> None:
    """`--scale decode=3` plus the prefill worker: four processes, four different GPUs; a fifth
    is refused with a message naming --device; a killed worker's GPU is leased again."""
    for _ in range(4):
        workers.append(Worker(4, tmp_path))
    devices = [w.device for w in workers]
    assert sorted(devices) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"], devices

    fifth = Worker(4, tmp_path)
    workers.append(fifth)
    assert fifth.device.startswith("ERROR --device auto: all 4 GPU(s)"), fifth.device
    assert fifth.proc.wait(timeout=30) == 2

    workers[1].stop(kill=True)  # SIGKILL: the kernel drops its flock
    again = Worker(4, tmp_path)
    workers.append(again)
    assert again.device == devices[1]


def test_a_released_lease_is_free_again_in_process(tmp_path) -> None:
    first = acquire_free_gpu(2, tmp_path, holder="a")
    second = acquire_free_gpu(2, tmp_path, holder="b")
    assert (first.index, second.index) == (0, 1)
    assert "b pid=" in second.path.read_text()
    with pytest.raises(DeviceConfigError, match="--device auto"):
        acquire_free_gpu(2, tmp_path)
    first.release()
    assert acquire_free_gpu(2, tmp_path).index == 0


def test_explicit_workers_are_stepped_around_and_may_share(tmp_path) -> None:
    """A worker given cuda:0 (or plain cuda) marks GPU 0 used: an auto worker takes GPU 1;
    a second explicit cuda:0 worker still starts (sharing on purpose)."""
    device, explicit = place_worker("cuda:0", 2, tmp_path)
    assert device == "cuda:0" and explicit is not None
    _, also_gpu0 = place_worker("cuda", 2, tmp_path)
    assert also_gpu0 is not None and also_gpu0.index == 0
    device, auto = place_worker("auto", 2, tmp_path)
    assert device == "cuda:1" and auto is not None and auto.exclusive
    # GPU 1 is held exclusively: an explicit worker on it is not refused, only warned.
    assert place_worker("cuda:1", 2, tmp_path) == ("cuda:1", None)


def test_visible_devices_name_the_lease_files(tmp_path) -> None:
    """Two workers with CUDA_VISIBLE_DEVICES=2,3 and =3 agree that host GPU 3 is one GPU."""
    assert physical_ids(2, "2,3") == ["2", "3"]
    assert physical_ids(2, None) == ["0", "1"]
    assert physical_ids(2, "GPU-aa,GPU-bb") == ["GPU-aa", "GPU-bb"]
    wide = acquire_free_gpu(2, tmp_path, "3,2")  # its cuda:0 is host GPU 3
    narrow = acquire_free_gpu(1, tmp_path, "2") if wide.gpu_id == "3" else None
    assert wide.gpu_id == "3" and narrow is not None and narrow.gpu_id == "2"
    with pytest.raises(DeviceConfigError):
        acquire_free_gpu(1, tmp_path, "3")


@pytest.mark.parametrize(
    ("spec", "count", "message"),
    [
        ("cuda:4", 4, "--device cuda:4: this process sees 4 CUDA device"),
        ("cuda:0", 0, "--device cuda:0: this process sees 0 CUDA device"),
        ("cuda", 0, "--device cuda: no CUDA device is visible"),
        ("gpu1", 4, "--device 'gpu1': use cpu, cuda, cuda:N or auto"),
        ("cuda:-1", 4, "--device 'cuda:-1': use cpu, cuda, cuda:N or auto"),
    ],
)
def test_a_gpu_that_does_not_exist_names_the_flag(spec, count, message) -> None:
    with pytest.raises(DeviceConfigError, match="^" + message.replace("(", r"\(")):
        check_device(spec, count)


@pytest.mark.parametrize(
    ("spec", "count", "device"),
    [("cuda:3", 4, "cuda:3"), ("cpu", 0, "cpu"), (None, 0, None), ("auto", 0, "cpu")],
)
def test_good_devices_pass(tmp_path, spec, count, device) -> None:
    assert place_worker(spec, count, tmp_path)[0] == device


def test_worker_flags(tmp_path) -> None:
    parse = build_parser("decode").parse_args
    s = settings_from_args(
        parse(["--model", "m", "--device", "auto", "--gpu-memory-utilization", "0.45",
               "--gpu-lease-dir", str(tmp_path)])
    )  # fmt: skip
    assert (s.device, s.gpu_memory_utilization, s.gpu_lease_dir) == ("auto", 0.45, str(tmp_path))
    assert settings_from_args(parse(["--model", "m"])).gpu_memory_utilization == 0.9
    for bad in ("0", "1.5", "-0.1", "half"):
        with pytest.raises(SystemExit):
            parse(["--model", "m", "--gpu-memory-utilization", bad])


def test_bad_fraction_names_the_flag_on_stderr(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser("decode").parse_args(["--model", "m", "--gpu-memory-utilization", "1.5"])
    assert "--gpu-memory-utilization" in capsys.readouterr().err


def test_the_worker_exits_naming_the_flag(tmp_path) -> None:
    """The real entry point: a GPU this (CPU-only) host does not have is one stderr line and
    exit 2, before any model load or NATS connection."""
    out = subprocess.run(
        [sys.executable, "-m", "loraplex.decode", "--model", str(tmp_path / "none"),
         "--nats-url", "nats://127.0.0.1:1", "--device", "cuda:3",
         "--gpu-lease-dir", str(tmp_path), "--metrics-port", "0"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "loraplex decode worker: error: --device cuda:3: this process sees 0 CUDA device(s) (none)"
    )
    assert "Traceback" not in out.stderr


def test_env_defaults_for_compose_overrides(monkeypatch) -> None:
    """deploy/compose.multi-gpu.yml sets these in the workers' environment instead of flags."""
    monkeypatch.setenv("LORAPLEX_DEVICE", "auto")
    monkeypatch.setenv("LORAPLEX_GPU_MEMORY_UTILIZATION", "0.45")
    s = settings_from_args(build_parser("decode").parse_args(["--model", "m"]))
    assert (s.device, s.gpu_memory_utilization) == ("auto", 0.45)


def test_an_unwritable_lease_dir(tmp_path) -> None:
    """auto needs the lease: a clear error naming --gpu-lease-dir; an explicit device runs
    without one (a read-only root filesystem in a pod, say)."""
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(DeviceConfigError, match="give --gpu-lease-dir a writable directory"):
        place_worker("auto", 2, blocked / "leases")
    assert place_worker("cuda:1", 2, blocked / "leases") == ("cuda:1", None)
    assert place_worker("cuda", 1, blocked / "leases") == ("cuda", None)
