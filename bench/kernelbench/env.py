"""The run's environment: device, dtype, kernels, timer, grid, and the measured ceilings (device
copy rate and matmul rate) that the floors are computed from."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib import metadata
from types import SimpleNamespace

import torch

from loraplex.model.config import ModelConfig

from .config import Grid
from .timing import Timer


@dataclass
class Env:
    smoke: bool
    device: torch.device
    dtype: torch.dtype
    ops: SimpleNamespace  # the engine's kernel namespace for the device
    timer: Timer
    grid: Grid
    cfg: ModelConfig  # full model shapes (layers from --layers)
    args: argparse.Namespace
    copy_bw: float = 0.0  # bytes/s, read + written
    mm_rate: float = 0.0  # FLOP/s of a large matmul in ``dtype``

    @property
    def elem(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def tol(self) -> float:
        return 1e-4 if self.dtype == torch.float32 else 3e-2

    def gen(self, salt: int = 0) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.args.seed * 1000 + salt)

    def floor(self, nbytes: float, flops: float) -> tuple[float, str]:
        mem, math_ = nbytes / self.copy_bw, flops / self.mm_rate
        return (mem, "mem") if mem >= math_ else (math_, "math")


def measure_ceilings(env: Env) -> None:
    """Device-to-device copy rate (bytes read + written) and a large matmul's FLOP/s, measured now."""
    nbytes = (16 << 20) if env.smoke else (1 << 30)
    src = torch.randn(nbytes // 4, dtype=torch.float32, device=env.device)
    dst = torch.empty_like(src)
    t = env.timer.time(lambda: dst.copy_(src), flush=False, graph=False).seconds
    env.copy_bw = 2 * nbytes / t
    n = 256 if env.smoke else 8192
    a = torch.randn(n, n, device=env.device, dtype=env.dtype)
    b = torch.randn(n, n, device=env.device, dtype=env.dtype)
    t = env.timer.time(lambda: a @ b, flush=False, graph=False).seconds
    env.mm_rate = 2 * n**3 / t


def versions() -> str:
    def ver(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {ver('triton')}"


def device_line(env: Env) -> str:
    if env.smoke:
        return f"CPU smoke run ({env.ops.backend} kernels, tiny shapes): NOT a GPU measurement"
    p = torch.cuda.get_device_properties(env.device)
    l2 = getattr(p, "L2_cache_size", 0) / 2**20
    return (
        f"{torch.cuda.get_device_name(env.device)} (sm_{p.major}{p.minor}, "
        f"{p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB, L2 {l2:.0f} MiB)"
    )
