"""Timing: CUDA events with an L2 flush before every run (graph replay or eager behind a
GPU sleep), and the wall-clock timer of --smoke."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .config import log


@dataclass(frozen=True)
class Timing:
    seconds: float  # median
    how: str  # "graph" (CUDA-graph replay), "eager" or "cpu"


def capture_graph(fn: Callable[[], object]) -> Callable[[], None]:
    """Record ``fn`` in a CUDA graph (after warm-up on a side stream) and return its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph.replay


class CudaTimer:
    """Median device time of a callable: CUDA events, L2 flushed before every run."""

    def __init__(self, reps: int, warmup: int, graphs: bool) -> None:
        self.reps, self.warmup, self.graphs = reps, warmup, graphs
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        l2 = int(getattr(props, "L2_cache_size", 64 << 20))
        self.flush_buf = torch.empty(max(256 << 20, 4 * l2) // 4, dtype=torch.int32, device="cuda")
        self.cycles_per_s = self._sleep_rate()

    @staticmethod
    def _sleep_rate() -> float:
        if not hasattr(torch.cuda, "_sleep"):
            return 0.0
        torch.cuda._sleep(1000)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(20_000_000)
        end.record()
        end.synchronize()
        return 20_000_000 / (start.elapsed_time(end) / 1e3)

    def _hold_gpu(self, seconds: float) -> None:
        """Keep the GPU busy while the host queues eager launches, so gaps are not timed."""
        if self.cycles_per_s > 0:
            torch.cuda._sleep(int(min(seconds, 0.5) * self.cycles_per_s))

    def time(
        self, fn: Callable[[], object], flush: bool = True, graph: bool | None = None
    ) -> Timing:
        run, how = fn, "eager"
        if self.graphs if graph is None else graph:
            try:
                run, how = capture_graph(fn), "graph"
            except Exception as e:  # noqa: BLE001 - fall back to eager timing, say why
                log(f"    graph capture failed ({type(e).__name__}: {str(e)[:120]}); timing eager")
                torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(self.warmup):
            if flush:
                self.flush_buf.zero_()
            run()
        host_per_run = (time.perf_counter() - t0) / max(self.warmup, 1)
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        if how == "eager":
            self._hold_gpu(1.5 * host_per_run * self.reps)
        for s, e in zip(starts, ends, strict=True):
            if flush:
                self.flush_buf.zero_()
            s.record()
            run()
            e.record()
        torch.cuda.synchronize()
        return Timing(
            statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)) / 1e3,
            how,
        )

    def time_synced(self, fns: Sequence[Callable[[], object]], iters: int) -> list[float]:
        """Engine-like: one call at a time, synchronised after each (host time included); the
        callables take turns, so drifting clocks affect them alike.  Median seconds of each."""
        for _ in range(self.warmup):
            for fn in fns:
                fn()
        torch.cuda.synchronize()
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(iters):
            for fn, acc in zip(fns, times, strict=True):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                e.synchronize()
                acc.append(s.elapsed_time(e) / 1e3)
        return [statistics.median(t) for t in times]


class CpuTimer:
    """--smoke: wall-clock medians (no flush, no graphs)."""

    def __init__(self, reps: int, warmup: int) -> None:
        self.reps, self.warmup = reps, warmup

    def time(
        self, fn: Callable[[], object], flush: bool = True, graph: bool | None = None
    ) -> Timing:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return Timing(statistics.median(times), "cpu")

    def time_synced(self, fns: Sequence[Callable[[], object]], iters: int) -> list[float]:
        for _ in range(self.warmup):
            for fn in fns:
                fn()
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(iters):
            for fn, acc in zip(fns, times, strict=True):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        return [statistics.median(t) for t in times]


Timer = CudaTimer | CpuTimer
