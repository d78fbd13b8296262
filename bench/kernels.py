"""Kernels on the GPU: multi-LoRA SGMV/BGMV at real rank, the decode step, attention, vs the floor.

    python bench/kernels.py [--only lora,attn,decode] [--quick] [--md FILE] [--json FILE]
                            [--dtype bfloat16] [--layers 32] [--write-docs]
    python bench/kernels.py --smoke              # CPU, tiny shapes, torch twins: code paths only
    python bench/kernels.py --docs-from FILE     # put a section made elsewhere (--md) into the docs

Full mode needs CUDA (Triton kernels through ``loraplex.kernels.dispatch``) and uses Llama-2-7B
shapes (hidden 4096, intermediate 11008, 32 heads of 128).  Sections:

1. **LoRA kernels**: the engine's own ``add_lora`` (fused SGMV for prefill, BGMV for decode, every
   adapter at its real rank) against (b1) the same Triton kernels with every slot's rank set to the
   largest rank in the batch (what a padded-rank kernel such as vLLM's does; vLLM pads further, to
   ``--max-lora-rank``), (b2) torch gather + bmm on weights padded to that rank, (a) a per-adapter
   loop of torch matmuls (rows grouped by adapter, ``x_g @ A^T @ B^T``), and (c) the floor:
   bytes of x, y (read + written) and the real-rank parts of the adapters actually used, over the
   device-to-device copy rate measured in the same run (or FLOPs over the measured bf16 matmul
   rate, whichever is larger).
2. **Decode step** of a random-weight Llama-2-7B-shaped ``LlamaForCausalLM`` (logits included) at
   batch 32 with 32 distinct rank-16 all-target adapters vs the same step with
   ``LoraMeta.active=False``: eager (engine-like, synchronised per step, host time included) and
   replayed from a CUDA graph (device time).
3. **Attention**: prefill (``torch_ref.prefill_attention``, per-sequence SDPA) vs packed varlen
   alternatives, and paged decode attention, Triton vs the torch twin.

Kernel timings are medians over ``--reps`` runs timed with CUDA events, each run preceded by an L2
flush (a write over a buffer 4x the L2), with the work replayed from a CUDA graph so that host
launch overhead is not counted (``--no-graphs``: eager launches behind a GPU sleep instead).
The section body goes to stdout, to ``--md`` and ``--json`` after each part (partial results
survive a time-out), and with ``--write-docs`` into docs/benchmarks.md (only the section
"Kernels on the GPU (bench/kernels.py)").
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import re
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent


def _use_repo_loraplex() -> None:
    """Benchmark this checkout: put its shared/ first unless ``loraplex`` already resolves there."""
    local = REPO_ROOT / "shared" / "loraplex"
    spec = importlib.util.find_spec("loraplex")
    found = Path(spec.origin).resolve().parent if spec and spec.origin else None
    if local.is_dir() and found != local.resolve():
        sys.path.insert(0, str(REPO_ROOT / "shared"))
        sys.path.append(str(REPO_ROOT / "services"))


_use_repo_loraplex()
sys.path.insert(0, str(REPO_ROOT / "bench"))

from common import markdown_table, replace_doc_section, today  # noqa: E402

import loraplex  # noqa: E402
from loraplex.engine.forward_context import AttentionMeta, ForwardContext, LoraMeta  # noqa: E402
from loraplex.kernels import torch_ref  # noqa: E402
from loraplex.kernels.dispatch import get_ops  # noqa: E402
from loraplex.kvcache.paged_cache import PagedKVCache  # noqa: E402
from loraplex.lora.adapter import LORA_TARGETS  # noqa: E402
from loraplex.lora.apply import add_lora  # noqa: E402
from loraplex.lora.weights import LoraWeights  # noqa: E402
from loraplex.model.config import ModelConfig  # noqa: E402
from loraplex.model.llama import LlamaForCausalLM  # noqa: E402

SECTION = "Kernels on the GPU (bench/kernels.py)"
TARGET_FLOOR_X = 2.0  # SGMV/BGMV time / floor
TARGET_OVERHEAD = 0.10  # decode step with 32 distinct rank-16 adapters vs no adapters
BIG_FLOOR_S = 10e-6  # rows with a smaller floor are dominated by kernel launch latency
POPULARITIES = ("distinct", "uniform", "zipf")
PARTS = ("lora", "attn", "decode")

LLAMA2_7B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# --smoke: tiny, with grouped-query attention and an intermediate size that is no power of two.
TINY: dict[str, Any] = {
    **LLAMA2_7B,
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- grids -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    max_rank: int  # storage rank of the slot stacks (the engine's max_lora_rank)
    rank_patterns: tuple[tuple[int, ...], ...]  # rank sweep: adapter j has pattern[j % len]
    rank_groups: tuple[str, ...]  # projection groups of the rank sweep
    load_ranks: tuple[int, ...]  # rank pattern of the batch / adapters / popularity sweep
    adapters: tuple[int, ...]
    bgmv_rank_rows: int
    bgmv_rows: tuple[int, ...]
    sgmv_rank_shape: tuple[int, int]  # (requests, tokens per request)
    sgmv_shapes: tuple[tuple[int, int], ...]
    prefill_tokens: int  # every prefill-attention case packs this many tokens
    prefill_piece: tuple[int, int]  # length range of the mixed-length prefill case
    prefill_equal: tuple[int, ...]  # equal-length prefill cases (prompt length)
    decode_attn: tuple[tuple[int, int], ...]  # (batch, context); context 0 = mixed up to max
    decode_attn_max_ctx: int
    block_size: int


FULL_GRID = Grid(
    max_rank=64,
    rank_patterns=((8,), (16,), (32,), (64,), (8, 16, 64)),
    rank_groups=("qkv", "o", "gate_up", "down", "layer"),
    load_ranks=(16,),
    adapters=(1, 4, 16, 32, 64),
    bgmv_rank_rows=32,
    bgmv_rows=(1, 8, 32, 64),
    sgmv_rank_shape=(8, 256),
    sgmv_shapes=((4, 512), (16, 128), (16, 512), (64, 128)),
    prefill_tokens=4096,
    prefill_piece=(32, 1024),
    prefill_equal=(2048, 512, 128),
    decode_attn=(
        (1, 512),
        (8, 512),
        (32, 512),
        (64, 512),
        (1, 2048),
        (8, 2048),
        (32, 2048),
        (64, 2048),
        (32, 0),
    ),
    decode_attn_max_ctx=2048,
    block_size=16,
)
QUICK_GRID = dataclasses.replace(
    FULL_GRID,
    rank_groups=("gate_up", "layer"),
    adapters=(1, 16, 64),
    bgmv_rows=(1, 32, 64),
    sgmv_shapes=((16, 128), (16, 512)),
    prefill_equal=(512,),
    decode_attn=((32, 512), (64, 2048), (32, 0)),
)
SMOKE_GRID = Grid(
    max_rank=8,
    rank_patterns=((4,), (8,), (2, 4, 8)),
    rank_groups=("qkv", "o", "gate_up", "down", "layer"),
    load_ranks=(4,),
    adapters=(1, 2, 4),
    bgmv_rank_rows=4,
    bgmv_rows=(1, 4),
    sgmv_rank_shape=(3, 5),
    sgmv_shapes=((2, 8), (4, 4)),
    prefill_tokens=16,
    prefill_piece=(2, 8),
    prefill_equal=(8, 4),
    decode_attn=((1, 8), (4, 24), (4, 0)),
    decode_attn_max_ctx=24,
    block_size=8,
)


# ---- timing ------------------------------------------------------------------------------------


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


# ---- environment -------------------------------------------------------------------------------


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


# ---- LoRA cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSpec:
    """Projections sharing one input, called as ``DecoderLayer`` calls ``add_lora``."""

    name: str
    in_features: int
    slices: tuple[tuple[str, int], ...]  # (target, column offset in the group's output)
    outs: tuple[int, ...]

    @property
    def width(self) -> int:
        return sum(self.outs)


def group_specs(cfg: ModelConfig) -> dict[str, GroupSpec]:
    q, kv, h, i = cfg.q_size, cfg.kv_size, cfg.hidden_size, cfg.intermediate_size
    return {
        "qkv": GroupSpec("qkv", h, (("q_proj", 0), ("k_proj", q), ("v_proj", q + kv)), (q, kv, kv)),
        "o": GroupSpec("o", q, (("o_proj", 0),), (h,)),
        "gate_up": GroupSpec("gate_up", h, (("gate_proj", 0), ("up_proj", i)), (i, i)),
        "down": GroupSpec("down", i, (("down_proj", 0),), (h,)),
    }


@dataclass(frozen=True)
class LoraCase:
    sweep: str  # "rank" or "load"
    mode: str  # "bgmv" (decode rows) or "sgmv" (prefill segments)
    group: str  # qkv | o | gate_up | down | layer (all four, one decoder layer)
    requests: int  # decode rows, or prefill requests
    tokens: int  # tokens per request (1 for decode)
    adapters: int
    popularity: str  # distinct (round robin) | uniform | zipf (i.i.d. draws)
    ranks: tuple[int, ...]  # adapter j has rank ranks[j % len(ranks)]

    @property
    def rank_label(self) -> str:
        return "/".join(map(str, self.ranks))


def load_combos(requests: int, adapters: Sequence[int]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for n in adapters:
        if n <= requests:
            out += [(n, p) for p in (("distinct",) if n == 1 else POPULARITIES)]
    return out


def lora_cases(grid: Grid) -> list[LoraCase]:
    cases = []
    for mode, (req, tok) in (("bgmv", (grid.bgmv_rank_rows, 1)), ("sgmv", grid.sgmv_rank_shape)):
        for g in grid.rank_groups:
            for rk in grid.rank_patterns:
                cases.append(LoraCase("rank", mode, g, req, tok, req, "distinct", rk))
    shapes = [("bgmv", b, 1) for b in grid.bgmv_rows]
    shapes += [("sgmv", r, t) for r, t in grid.sgmv_shapes]
    for mode, req, tok in shapes:
        for n, pop in load_combos(req, grid.adapters):
            cases.append(LoraCase("load", mode, "layer", req, tok, n, pop, grid.load_ranks))
    return cases


def assign_adapters(n_req: int, n: int, popularity: str, alpha: float, seed: int) -> list[int]:
    """Adapter of every request: round robin (distinct), or i.i.d. uniform / Zipf(alpha) draws."""
    if popularity == "distinct" or n == 1:
        return [i % n for i in range(n_req)]
    probs = torch.ones(n) if popularity == "uniform" else torch.arange(1, n + 1.0) ** -alpha
    gen = torch.Generator().manual_seed(seed)
    return torch.multinomial(probs, n_req, replacement=True, generator=gen).tolist()


def segments_of(slots: list[int], tokens: int) -> list[tuple[int, int, int]]:
    """Prefill rows as the engine packs them (``build_prefill``): requests sorted by slot,
    neighbours with the same slot merged into one segment.  Returns (start, end, slot)."""
    segs: list[tuple[int, int, int]] = []
    for slot in sorted(slots):
        if segs and segs[-1][2] == slot:
            s, e, _ = segs[-1]
            segs[-1] = (s, e + tokens, slot)
        else:
            start = segs[-1][1] if segs else 0
            segs.append((start, start + tokens, slot))
    return segs


@dataclass
class LoraSetup:
    case: LoraCase
    groups: list[GroupSpec]
    weights: LoraWeights  # one layer; slot j holds adapter j at its real rank, zero padding
    padded: LoraWeights  # same tensors, every used slot's rank set to the batch's largest
    meta: LoraMeta
    xs: list[torch.Tensor]
    ys: list[torch.Tensor]
    slot_rank: list[int]
    rows_per_slot: Counter[int]
    rmax: int
    blocks: list[tuple[int, Any]]  # (slot, rows: slice or index tensor) for the per-adapter loop
    gather: SimpleNamespace  # precomputed index tensors of the gather-bmm baseline


def fill_lora(
    w: LoraWeights, slot_ranks: list[int], cfg: ModelConfig, gen: torch.Generator
) -> None:
    """Random A [r, in] ~ N(0, 1/in) and B [out, r] ~ N(0, 1/r) per slot, zero past each real rank."""
    n = len(slot_ranks)
    ranks = torch.tensor(slot_ranks, dtype=torch.int32, device=w.a[LORA_TARGETS[0]].device)
    keep = torch.arange(w.max_rank, device=ranks.device)[None, :] < ranks[:, None]  # [n, R]
    for t in LORA_TARGETS:
        in_f, _ = cfg.module_shape(t)
        a, b = w.a[t][:, :n], w.b[t][:, :n]  # [L, n, R, in], [L, n, out, R]
        a.normal_(0.0, in_f**-0.5, generator=gen).mul_(keep[None, :, :, None])
        b.normal_(0.0, 1.0, generator=gen).mul_(
            keep[None, :, None, :] * ranks[None, :, None, None] ** -0.5
        )
        w.ranks[t][:, :n] = ranks


def padded_view(w: LoraWeights, rmax: int) -> LoraWeights:
    p = copy.copy(w)
    p.ranks = {t: torch.where(r > 0, rmax, 0).to(torch.int32) for t, r in w.ranks.items()}
    return p


def build_setup(case: LoraCase, env: Env, salt: int) -> LoraSetup:
    cfg1 = dataclasses.replace(env.cfg, num_layers=1)
    specs = group_specs(env.cfg)
    groups = list(specs.values()) if case.group == "layer" else [specs[case.group]]
    slots = assign_adapters(
        case.requests, case.adapters, case.popularity, env.args.zipf_alpha, salt
    )
    slot_rank = [case.ranks[j % len(case.ranks)] for j in range(case.adapters)]
    gen = env.gen(salt)
    w = LoraWeights(cfg1, case.adapters, env.grid.max_rank, env.dtype, env.device)
    fill_lora(w, slot_rank, cfg1, gen)
    rmax = max(slot_rank[s] for s in set(slots))
    dev = env.device
    i32 = partial(torch.tensor, dtype=torch.int32, device=dev)
    if case.mode == "bgmv":
        n_rows = case.requests
        meta = LoraMeta(True, False, None, None, i32(slots))
        rows_per_slot = Counter(slots)
        blocks = [
            (s, torch.tensor([i for i, x in enumerate(slots) if x == s], device=dev))
            for s in sorted(rows_per_slot)
        ]
        gather = SimpleNamespace(idx=meta.indices.long())
    else:
        segs = segments_of(slots, case.tokens)
        n_rows = segs[-1][1]
        meta = LoraMeta(
            True,
            True,
            i32([0] + [e for _, e, _ in segs]),
            i32([s for _, _, s in segs]),
            None,
            max_seg_len=max(e - s for s, e, _ in segs),
        )
        rows_per_slot = Counter({s: e - b for b, e, s in segs})
        blocks = [(s, slice(b, e)) for b, e, s in segs]
        gather = sgmv_gather_index(segs, dev)
    xs = [
        torch.randn(n_rows, g.in_features, generator=gen, device=dev).to(env.dtype) for g in groups
    ]
    ys = [torch.randn(n_rows, g.width, generator=gen, device=dev).to(env.dtype) for g in groups]
    return LoraSetup(
        case,
        groups,
        w,
        padded_view(w, rmax),
        meta,
        xs,
        ys,
        slot_rank,
        rows_per_slot,
        rmax,
        blocks,
        gather,
    )


def sgmv_gather_index(segs: list[tuple[int, int, int]], dev: torch.device) -> SimpleNamespace:
    """Rows of every segment padded to the longest one: [G, Lmax] row ids (pad -> row 0) and the
    flat positions of the real rows (in row order, since segments tile 0..T)."""
    lmax = max(e - s for s, e, _ in segs)
    rows = torch.zeros(len(segs), lmax, dtype=torch.long)
    valid = torch.zeros(len(segs), lmax, dtype=torch.bool)
    for g, (s, e, _) in enumerate(segs):
        rows[g, : e - s] = torch.arange(s, e)
        valid[g, : e - s] = True
    return SimpleNamespace(
        rows=rows.to(dev),
        flat=valid.flatten().nonzero().squeeze(1).to(dev),
        slots=torch.tensor([s for _, _, s in segs], device=dev),
    )


# The variants.  Each adds the LoRA delta of every group into ``ys`` in place.


def run_engine(s: LoraSetup, weights: LoraWeights, ops: SimpleNamespace) -> None:
    """The engine's path: ``add_lora`` with fused SGMV/BGMV (real ranks unless ``weights`` is padded)."""
    for g, x, y in zip(s.groups, s.xs, s.ys, strict=True):
        add_lora(y, x, 0, g.slices, weights, s.meta, ops)  # type: ignore[arg-type]


def run_loop(s: LoraSetup) -> None:
    """Per-adapter loop: rows of each adapter gathered, ``(x_g @ A^T) @ B^T`` at the real rank."""
    w = s.weights
    for g, x, y in zip(s.groups, s.xs, s.ys, strict=True):
        for slot, rows in s.blocks:
            r = s.slot_rank[slot]
            xg = x[rows]
            for (t, off), out in zip(g.slices, g.outs, strict=True):
                delta = (xg @ w.a[t][0, slot, :r].T) @ w.b[t][0, slot, :, :r].T
                y[rows, off : off + out] += delta


def run_gather_bmm(s: LoraSetup) -> None:
    """Torch gather + bmm with every adapter padded to the batch's largest rank."""
    w, r, gi = s.weights, s.rmax, s.gather
    for g, x, y in zip(s.groups, s.xs, s.ys, strict=True):
        if s.case.mode == "bgmv":
            for (t, off), out in zip(g.slices, g.outs, strict=True):
                v = torch.bmm(w.a[t][0][gi.idx, :r], x.unsqueeze(-1))  # [T, r, 1]
                y[:, off : off + out] += torch.bmm(w.b[t][0][gi.idx, :, :r], v).squeeze(-1)
        else:
            xp = x[gi.rows]  # [G, Lmax, in]
            for (t, off), out in zip(g.slices, g.outs, strict=True):
                v = torch.bmm(xp, w.a[t][0][gi.slots, :r].transpose(1, 2))  # [G, Lmax, r]
                d = torch.bmm(v, w.b[t][0][gi.slots, :, :r].transpose(1, 2))  # [G, Lmax, out]
                y[:, off : off + out] += d.flatten(0, 1)[gi.flat]


def reference_deltas(s: LoraSetup) -> list[torch.Tensor]:
    """fp32 deltas from the project's oracle (the torch twins) on fp32 copies of the weights."""
    w, m, out = s.weights, s.meta, []
    for g, x in zip(s.groups, s.xs, strict=True):
        y = torch.zeros(x.shape[0], g.width, dtype=torch.float32, device=x.device)
        for t, off in g.slices:
            a, b, rk = w.a[t][0].float(), w.b[t][0].float(), w.ranks[t][0]
            v = torch.zeros(x.shape[0], w.max_rank, dtype=torch.float32, device=x.device)
            if m.is_prefill:
                torch_ref.sgmv_shrink(x.float(), a, m.seg_starts, m.seg_slots, rk, v)
                torch_ref.sgmv_expand(v, b, m.seg_starts, m.seg_slots, rk, y, off)
            else:
                torch_ref.bgmv_shrink(x.float(), a, m.indices, rk, v)
                torch_ref.bgmv_expand(v, b, m.indices, rk, y, off)
        out.append(y)
    return out


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def check_variant(s: LoraSetup, fn: Callable[[], None], ref: list[torch.Tensor]) -> float:
    """Largest relative error of the delta ``fn`` adds, against ``ref``; ``ys`` are restored."""
    saved = [y.clone() for y in s.ys]
    fn()
    err = max(rel_err(y.float() - y0.float(), r) for y, y0, r in zip(s.ys, saved, ref, strict=True))
    for y, y0 in zip(s.ys, saved, strict=True):
        y.copy_(y0)
    return err if math.isfinite(err) else float("inf")


def lora_traffic(s: LoraSetup, elem: int) -> tuple[int, int]:
    """(bytes, FLOPs) of an ideal kernel: x read, y read + written, and the real-rank A and B
    of each used adapter read once (the rank-r intermediate never leaves the chip)."""
    nbytes = flops = 0
    rows = sum(s.rows_per_slot.values())
    for g in s.groups:
        per_rank = g.in_features * len(g.outs) + g.width  # A and B elements per unit of rank
        nbytes += elem * (rows * g.in_features + 2 * rows * g.width)
        for slot, n in s.rows_per_slot.items():
            r = s.slot_rank[slot]
            nbytes += elem * r * per_rank
            flops += 2 * n * r * per_rank
    return nbytes, flops


VARIANTS = ("real", "padded", "gather", "loop")


@dataclass
class LoraRow:
    case: LoraCase
    rows: int
    used_adapters: int
    segments: int
    rmax: int
    nbytes: int
    flops: int
    floor_s: float
    bound: str
    times: dict[str, float] = field(default_factory=dict)  # variant -> median seconds (nan: failed)
    how: dict[str, str] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def x_floor(self) -> float:
        return self.times.get("real", math.nan) / self.floor_s


def variant_fns(s: LoraSetup, env: Env) -> dict[str, Callable[[], None]]:
    return {
        "real": partial(run_engine, s, s.weights, env.ops),
        "padded": partial(run_engine, s, s.padded, env.ops),
        "gather": partial(run_gather_bmm, s),
        "loop": partial(run_loop, s),
    }


def bench_lora_case(case: LoraCase, env: Env, salt: int) -> LoraRow:
    s = build_setup(case, env, salt)
    nbytes, flops = lora_traffic(s, env.elem)
    floor_s, bound = env.floor(nbytes, flops)
    row = LoraRow(
        case,
        sum(s.rows_per_slot.values()),
        len(s.rows_per_slot),
        len(s.blocks),
        s.rmax,
        nbytes,
        flops,
        floor_s,
        bound,
    )
    ref = reference_deltas(s)
    for name, fn in variant_fns(s, env).items():
        try:
            row.errors[name] = check_variant(s, fn, ref)
            t = env.timer.time(fn)
            row.times[name], row.how[name] = t.seconds, t.how
        except Exception as e:  # noqa: BLE001 - one failed variant must not end the run
            log(f"    {name} failed: {type(e).__name__}: {str(e)[:200]}")
            row.errors.setdefault(name, math.nan)
            row.times[name] = math.nan
            if env.device.type == "cuda":
                torch.cuda.synchronize()
    del s, ref
    if env.device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def bench_lora(env: Env) -> list[LoraRow]:
    cases = lora_cases(env.grid)
    rows = []
    for i, case in enumerate(cases):
        row = bench_lora_case(case, env, salt=i)
        log(
            f"  lora {i + 1}/{len(cases)} {case.mode} {case.group} req={case.requests}x{case.tokens} "
            f"n={case.adapters} {case.popularity} r={case.rank_label}: "
            + ", ".join(f"{k} {fmt_us(v)}" for k, v in row.times.items())
            + f", floor {fmt_us(row.floor_s)} us"
        )
        rows.append(row)
    return rows


# ---- decode step -------------------------------------------------------------------------------


@dataclass
class StepResult:
    layers: int
    batch: int
    context: int
    adapters: int
    rank: int
    max_rank: int
    num_kv_blocks: int
    eager_base: float = math.nan
    eager_lora: float = math.nan
    graph_base: float = math.nan
    graph_lora: float = math.nan
    graph_note: str = ""
    lora_changes_logits: bool = False
    notes: list[str] = field(default_factory=list)


def build_model(cfg: ModelConfig, env: Env, max_positions: int) -> LlamaForCausalLM:
    """Random Llama (N(0, 0.02) weights, unit norms) allocated in the serving dtype on the device."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(env.dtype)
    try:
        with torch.device(env.device):
            model = LlamaForCausalLM(cfg, max_positions)
    finally:
        torch.set_default_dtype(previous)
    gen = env.gen(7)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data.fill_(1.0)
        else:
            p.data.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def size_kv(cfg: ModelConfig, env: Env, batch: int, context: int) -> tuple[int, int, str]:
    """(num_kv_blocks, context, note): every sequence gets ``context`` tokens of cache, shrunk
    to what fits in free GPU memory (keeping a reserve for activations and graph pools)."""
    bs = env.grid.block_size
    per_seq = -(-context // bs)
    if env.device.type != "cuda":
        return batch * per_seq + 1, context, ""
    free = torch.cuda.mem_get_info(env.device)[0] - (4 << 30)
    fit = max(free, 0) // PagedKVCache.bytes_per_block(cfg, bs, env.dtype)
    if fit >= batch * per_seq + 1:
        return batch * per_seq + 1, context, ""
    per_seq = (fit - 1) // batch
    if per_seq < 1:
        raise RuntimeError("no room for the KV cache: lower --layers, --batch or --max-rank")
    note = f"context cut from {context} to {per_seq * bs} tokens to fit the KV cache in memory"
    return batch * per_seq + 1, per_seq * bs, note


def decode_inputs(
    env: Env, batch: int, context: int, num_blocks: int, n_adapters: int, active: bool
) -> tuple[torch.Tensor, torch.Tensor, ForwardContext]:
    """One new token per sequence at position context-1, blocks scattered at random."""
    dev, bs, gen = env.device, env.grid.block_size, env.gen(11)
    per_seq = -(-context // bs)
    perm = torch.randperm(num_blocks - 1, generator=torch.Generator().manual_seed(env.args.seed))
    tables = (perm[: batch * per_seq] + 1).view(batch, per_seq)
    pos = context - 1
    slot_mapping = tables[:, pos // bs] * bs + pos % bs
    attn = AttentionMeta(
        is_prefill=False,
        slot_mapping=slot_mapping.to(dev, torch.int64),
        cu_seqlens=[],
        block_tables=tables.to(dev, torch.int32),
        context_lens=torch.full((batch,), context, dtype=torch.int32, device=dev),
    )
    indices = torch.arange(batch, dtype=torch.int32, device=dev) % n_adapters
    lora = LoraMeta(active, False, None, None, indices)
    ids = torch.randint(0, env.cfg.vocab_size, (batch,), generator=gen, device=dev)
    positions = torch.full((batch,), pos, dtype=torch.int64, device=dev)
    return ids, positions, ForwardContext(attn, lora)


def bench_decode(env: Env) -> StepResult:
    a = env.args
    cfg = env.cfg
    model = build_model(cfg, env, max_positions=a.context_len + 16)
    lora = LoraWeights(cfg, a.decode_adapters, env.grid.max_rank, env.dtype, env.device)
    fill_lora(lora, [a.decode_rank] * a.decode_adapters, cfg, env.gen(5))
    num_blocks, context, note = size_kv(cfg, env, a.batch, a.context_len)
    kv = PagedKVCache(cfg, num_blocks, env.grid.block_size, env.dtype, env.device)
    kv.data.normal_(0.0, 1.0, generator=env.gen(9))
    res = StepResult(
        cfg.num_layers,
        a.batch,
        context,
        a.decode_adapters,
        a.decode_rank,
        env.grid.max_rank,
        num_blocks,
        notes=[note] if note else [],
    )
    logits_index = torch.arange(a.batch, device=env.device)

    def step(active: bool) -> Callable[[], torch.Tensor]:
        ids, pos, ctx = decode_inputs(env, a.batch, context, num_blocks, a.decode_adapters, active)

        def run() -> torch.Tensor:
            hidden = model(ids, pos, ctx, kv.layers, lora, env.ops)  # type: ignore[arg-type]
            return model.compute_logits(hidden[logits_index])

        return run

    with torch.inference_mode():
        base, with_lora = step(False), step(True)
        out_base, out_lora = base(), with_lora()
        if not (torch.isfinite(out_base).all() and torch.isfinite(out_lora).all()):
            res.notes.append("non-finite logits")
        res.lora_changes_logits = bool((out_base != out_lora).any())
        res.eager_base, res.eager_lora = env.timer.time_synced([base, with_lora], a.step_iters)
        log(
            f"  decode eager: base {res.eager_base * 1e3:.2f} ms, lora {res.eager_lora * 1e3:.2f} ms"
        )
        if env.device.type == "cuda" and a.graphs:
            try:
                g_base, g_lora = capture_graph(base), capture_graph(with_lora)
                res.graph_base = env.timer.time(g_base, flush=False, graph=False).seconds
                res.graph_lora = env.timer.time(g_lora, flush=False, graph=False).seconds
                log(
                    f"  decode graph: base {res.graph_base * 1e3:.2f} ms, "
                    f"lora {res.graph_lora * 1e3:.2f} ms"
                )
            except Exception as e:  # noqa: BLE001 - report, keep the eager numbers
                res.graph_note = f"capture failed: {type(e).__name__}: {str(e)[:160]}"
                log(f"  decode graph {res.graph_note}")
        else:
            res.graph_note = "not run (CPU)" if env.device.type != "cuda" else "--no-graphs"
    return res


# ---- attention ---------------------------------------------------------------------------------


@dataclass
class AttnRow:
    label: str
    tokens: int
    flops: float
    nbytes: float
    times: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def mixed_lengths(total: int, lo: int, hi: int, seed: int) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while sum(out) < total:
        out.append(min(int(torch.randint(lo, hi + 1, (1,), generator=gen)), total - sum(out)))
    return tuple(out)


def prefill_cases(grid: Grid, seed: int) -> list[tuple[str, tuple[int, ...]]]:
    cases = [
        (f"{grid.prefill_tokens // n} x {n}", (n,) * (grid.prefill_tokens // n))
        for n in grid.prefill_equal
    ]
    lens = mixed_lengths(grid.prefill_tokens, *grid.prefill_piece, seed)
    cases.append((f"{len(lens)} mixed {min(lens)}..{max(lens)}", lens))
    return cases


def per_seq_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: list[int], scale: float
) -> torch.Tensor:
    """Per-sequence SDPA without the twin's repeat_interleave copies (``enable_gqa`` instead)."""
    out = torch.empty_like(q)
    gqa = q.shape[1] != k.shape[1]
    for s, e in zip(cu[:-1], cu[1:], strict=True):
        o = F.scaled_dot_product_attention(
            q[s:e].transpose(0, 1),
            k[s:e].transpose(0, 1),
            v[s:e].transpose(0, 1),
            is_causal=True,
            scale=scale,
            enable_gqa=gqa,
        )
        out[s:e] = o.transpose(0, 1)
    return out


def packed_masked_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_id: torch.Tensor, scale: float
) -> torch.Tensor:
    """One SDPA over the packed batch with a block-diagonal causal mask (built per call)."""
    pos = torch.arange(q.shape[0], device=q.device)
    mask = (seq_id[:, None] == seq_id[None, :]) & (pos[None, :] <= pos[:, None])
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return o[0].transpose(0, 1)


@cache
def compiled_flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def flex_variant(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_id: torch.Tensor, scale: float
) -> Callable[[], torch.Tensor]:
    """FlexAttention (compiled) with a document-causal block mask, built outside the timing."""
    from torch.nn.attention.flex_attention import create_block_mask

    def doc_causal(b: Any, h: Any, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        return (seq_id[qi] == seq_id[ki]) & (ki <= qi)

    t = q.shape[0]
    mask = create_block_mask(doc_causal, None, None, t, t, device=q.device)
    qq, kk, vv = (x.transpose(0, 1)[None] for x in (q, k, v))
    flex, gqa = compiled_flex(), q.shape[1] != k.shape[1]
    return lambda: flex(qq, kk, vv, block_mask=mask, scale=scale, enable_gqa=gqa)[0].transpose(0, 1)


def flash_varlen_variant(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: list[int], scale: float
) -> Callable[[], torch.Tensor] | None:
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_varlen_func

    cu_t = torch.tensor(cu, dtype=torch.int32, device=q.device)
    lmax = max(e - s for s, e in zip(cu[:-1], cu[1:], strict=True))
    return lambda: flash_attn_varlen_func(
        q, k, v, cu_t, cu_t, lmax, lmax, softmax_scale=scale, causal=True
    )


PREFILL_VARIANTS = ("twin", "no_copy", "masked", "flex", "flash")


def prefill_variants(
    env: Env, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: list[int], scale: float
) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, str]]:
    lens = torch.tensor([e - s for s, e in zip(cu[:-1], cu[1:], strict=True)], device=q.device)
    seq_id = torch.repeat_interleave(torch.arange(len(lens), device=q.device), lens)
    fns: dict[str, Callable[[], torch.Tensor]] = {
        "twin": partial(torch_ref.prefill_attention, q, k, v, cu, scale),
        "no_copy": partial(per_seq_sdpa, q, k, v, cu, scale),
        "masked": partial(packed_masked_sdpa, q, k, v, seq_id, scale),
    }
    notes: dict[str, str] = {}
    if env.device.type != "cuda":
        notes["flex"] = notes["flash"] = "GPU only"
        return fns, notes
    if env.args.flex:
        try:
            fns["flex"] = flex_variant(q, k, v, seq_id, scale)
        except Exception as e:  # noqa: BLE001
            notes["flex"] = f"{type(e).__name__}: {str(e)[:100]}"
    else:
        notes["flex"] = "--no-flex"
    flash = flash_varlen_variant(q, k, v, cu, scale)
    if flash is None:
        notes["flash"] = "flash_attn not installed"
    else:
        fns["flash"] = flash
    return fns, notes


def bench_prefill_attention(env: Env) -> list[AttnRow]:
    cfg, rows = env.cfg, []
    h, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    scale = d**-0.5
    for label, lens in prefill_cases(env.grid, env.args.seed):
        gen, t = env.gen(21), sum(lens)
        q, k, v = (
            torch.randn(t, n, d, generator=gen, device=env.device).to(env.dtype)
            for n in (h, kvh, kvh)
        )
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)
        flops = sum(4.0 * h * d * n * (n + 1) / 2 for n in lens)
        row = AttnRow(label, t, flops, env.elem * t * d * (2 * h + 2 * kvh))
        fns, row.notes = prefill_variants(env, q, k, v, cu, scale)
        ref = fns["twin"]().float()
        for name, fn in fns.items():
            try:
                row.errors[name] = rel_err(fn().float(), ref)
                row.times[name] = env.timer.time(fn).seconds
            except Exception as e:  # noqa: BLE001
                row.notes[name] = f"{type(e).__name__}: {str(e)[:100]}"
                log(f"    prefill {name} failed: {row.notes[name]}")
        log(
            f"  prefill attn {label}: "
            + ", ".join(f"{k} {fmt_us(x)}" for k, x in row.times.items())
        )
        rows.append(row)
    return rows


def decode_attn_case(env: Env, batch: int, ctx: int) -> tuple[str, list[int]]:
    if ctx:
        return f"{batch} x {ctx}", [ctx] * batch
    hi = env.grid.decode_attn_max_ctx
    gen = torch.Generator().manual_seed(env.args.seed + batch)
    lens = torch.randint(env.grid.block_size, hi + 1, (batch,), generator=gen).tolist()
    return f"{batch} x mixed {min(lens)}..{max(lens)}", lens


def dense_decode_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """q: [B, H, D]; k, v: [B, KVH, L, D] contiguous (no paging) -> [B, H, D]."""
    o = F.scaled_dot_product_attention(
        q[:, :, None], k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return o.squeeze(2)


def bench_decode_attention(env: Env) -> list[AttnRow]:
    cfg, bs, rows = env.cfg, env.grid.block_size, []
    h, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    scale = d**-0.5
    for batch, ctx in env.grid.decode_attn:
        label, lens = decode_attn_case(env, batch, ctx)
        gen, dev = env.gen(31), env.device
        per_seq = [-(-n // bs) for n in lens]
        nblocks = sum(per_seq) + 1
        k_cache, v_cache = (
            torch.randn(nblocks, bs, kvh, d, generator=gen, device=dev).to(env.dtype)
            for _ in range(2)
        )
        perm = (
            torch.randperm(nblocks - 1, generator=torch.Generator().manual_seed(batch)) + 1
        ).tolist()
        tables = torch.zeros(batch, max(per_seq), dtype=torch.int32)
        at = 0
        for i, n in enumerate(per_seq):
            tables[i, :n] = torch.tensor(perm[at : at + n])
            at += n
        tables, lens_t = tables.to(dev), torch.tensor(lens, dtype=torch.int32, device=dev)
        q = torch.randn(batch, h, d, generator=gen, device=dev).to(env.dtype)
        kv_bytes = env.elem * sum(lens) * kvh * d * 2
        row = AttnRow(
            label, batch, 4.0 * h * d * sum(lens), kv_bytes + env.elem * 2 * batch * h * d
        )
        fns: dict[str, Callable[[], torch.Tensor]] = {
            "kernel": partial(
                env.ops.paged_decode_attention, q, k_cache, v_cache, tables, lens_t, scale
            ),
            "twin": partial(
                torch_ref.paged_decode_attention, q, k_cache, v_cache, tables, lens_t, scale
            ),
        }
        if len(set(lens)) == 1:
            n = lens[0]
            kd, vd = (
                c[tables.long()].flatten(1, 2)[:, :n].transpose(1, 2).contiguous()
                for c in (k_cache, v_cache)
            )
            fns["dense"] = partial(dense_decode_sdpa, q, kd, vd, scale)
        else:
            row.notes["dense"] = "mixed lengths"
        ref = fns["twin"]().float()
        for name, fn in fns.items():
            try:
                row.errors[name] = rel_err(fn().float(), ref)
                row.times[name] = env.timer.time(fn).seconds
            except Exception as e:  # noqa: BLE001
                row.notes[name] = f"{type(e).__name__}: {str(e)[:100]}"
                log(f"    decode attn {name} failed: {row.notes[name]}")
        log(
            f"  decode attn {label}: " + ", ".join(f"{k} {fmt_us(x)}" for k, x in row.times.items())
        )
        rows.append(row)
    return rows


# ---- report ------------------------------------------------------------------------------------


def fmt_us(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    us = seconds * 1e6
    return f"{us:.0f}" if us >= 1000 else f"{us:.1f}"


def fmt_rate(value: float, unit: str) -> str:
    """``value`` in units/s with a G or T prefix, e.g. ``3.02 TB/s`` or ``41.3 GFLOP/s``."""
    if not math.isfinite(value):
        return "—"
    if value >= 1e12:
        return f"{value / 1e12:.2f} T{unit}/s"
    return f"{value / 1e9:.3g} G{unit}/s"


def fmt_num(x: float) -> str:
    """A rate for a table cell: no decimals when large, three significant digits when small."""
    return "—" if not math.isfinite(x) else f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def fmt_x(x: float) -> str:
    return f"{x:.2f}x" if math.isfinite(x) else "—"


def err_flag(errors: dict[str, float], tol: float) -> str:
    bad = [k for k, e in errors.items() if not (e <= tol)]
    worst = max((e for e in errors.values() if math.isfinite(e)), default=math.nan)
    return f"{worst:.0e}" + (f" FAIL: {', '.join(bad)}" if bad else "")


LORA_HEADERS = [
    "real rank µs",
    "padded (same kernel) µs",
    "gather-bmm (padded) µs",
    "per-adapter loop µs",
    "floor µs",
    "GB/s",
    "x floor",
    "padded / real",
    "max err",
]


def lora_cells(r: LoraRow, env: Env) -> list[str]:
    t = r.times
    real = t.get("real", math.nan)
    gbs = r.nbytes / real / 1e9 if math.isfinite(real) else math.nan
    mark = "" if r.x_floor <= TARGET_FLOOR_X else " ✗"
    floor = fmt_us(r.floor_s) + (" (math)" if r.bound == "math" else "")
    graphs = "" if all(h != "eager" for h in r.how.values()) or env.smoke else " (some eager)"
    return [
        fmt_us(t.get("real")) + graphs,
        fmt_us(t.get("padded")),
        fmt_us(t.get("gather")),
        fmt_us(t.get("loop")),
        floor,
        fmt_num(gbs),
        fmt_x(r.x_floor) + (mark if math.isfinite(r.x_floor) else ""),
        fmt_x(t.get("padded", math.nan) / real),
        err_flag(r.errors, env.tol),
    ]


def shape_label(c: LoraCase) -> str:
    return f"{c.requests} rows" if c.mode == "bgmv" else f"{c.requests} x {c.tokens} tok"


def lora_rank_table(rows: list[LoraRow], mode: str, env: Env) -> str:
    sel = [r for r in rows if r.case.sweep == "rank" and r.case.mode == mode]
    body = [[r.case.group, r.case.rank_label, *lora_cells(r, env)] for r in sel]
    return markdown_table(["projections", "ranks", *LORA_HEADERS], body)


def lora_load_table(rows: list[LoraRow], mode: str, env: Env) -> str:
    sel = [r for r in rows if r.case.sweep == "load" and r.case.mode == mode]
    body = [
        [
            shape_label(r.case),
            f"{r.used_adapters}/{r.case.adapters}",
            r.case.popularity,
            str(r.segments),
            *lora_cells(r, env),
        ]
        for r in sel
    ]
    seg = "adapter groups" if mode == "bgmv" else "segments"
    return markdown_table(["batch", "adapters used/n", "popularity", seg, *LORA_HEADERS], body)


def lora_section(rows: list[LoraRow], env: Env) -> list[str]:
    g = env.grid
    req, tok = g.sgmv_rank_shape
    words = (
        "projections: qkv = q|k|v fused (3 slices), o, gate_up = gate|up fused, down, layer = all "
        "four calls of one decoder layer"
    )
    out = [
        "### Multi-LoRA kernels (SGMV / BGMV)",
        "",
        f"Slots stored at rank {g.max_rank} (the engine's `max_lora_rank`); each adapter's real "
        'rank in `ranks` ("8/16/64": adapter *j* has the *j* mod 3-th). Columns: **real rank** = '
        "the engine's `add_lora` (fused Triton SGMV/BGMV, each adapter at its rank); **padded** = "
        "the same kernels with every used slot's rank set to the batch's largest (vLLM pads to "
        "`--max-lora-rank`, so it does no better); **gather-bmm** = torch gather of the padded "
        "weights per row (BGMV) or per segment, rows padded to the longest segment (SGMV), then "
        "`bmm`; **per-adapter loop** = rows grouped by adapter, `(x_g @ A^T) @ B^T` at the real "
        "rank. **floor** = bytes (x read, y read + written, real-rank A and B of the adapters "
        'used) / copy rate, or FLOPs / matmul rate if larger ("math"); **GB/s** = those bytes / '
        f"real-rank time; ✗ = more than {TARGET_FLOOR_X:g}x the floor. Every variant's delta is "
        "checked against the torch twins in fp32 (max err = relative L2 error).",
        "",
        f"BGMV (decode), rank sweep: {g.bgmv_rank_rows} rows, {g.bgmv_rank_rows} distinct "
        f"adapters; {words}.",
        "",
        lora_rank_table(rows, "bgmv", env),
        "",
        f"SGMV (prefill), rank sweep: {req} requests x {tok} tokens, {req} distinct adapters "
        "(one segment each).",
        "",
        lora_rank_table(rows, "sgmv", env),
        "",
        f"BGMV (decode), batch / adapters / popularity, one decoder layer, ranks "
        f"{'/'.join(map(str, g.load_ranks))}: *distinct* = round robin, *uniform* / *zipf* = "
        f"i.i.d. draws (Zipf exponent {env.args.zipf_alpha:g}).",
        "",
        lora_load_table(rows, "bgmv", env),
        "",
        "SGMV (prefill), requests x tokens, one decoder layer (requests sorted by adapter and "
        "merged into segments, as `build_prefill` does).",
        "",
        lora_load_table(rows, "sgmv", env),
    ]
    return out


def decode_section(res: StepResult, env: Env) -> list[str]:
    def overhead(base: float, lora: float) -> str:
        if not (math.isfinite(base) and math.isfinite(lora)):
            return "—"
        ov = lora / base - 1
        return f"{ov * 100:+.1f}% " + ("(met)" if ov < TARGET_OVERHEAD else "(MISSED)")

    def tok_s(t: float) -> str:
        return f"{res.batch / t:,.0f}" if math.isfinite(t) else "—"

    body = [
        [
            "eager (host time included, synced per step)",
            f"{res.eager_base * 1e3:.2f}",
            f"{res.eager_lora * 1e3:.2f}",
            overhead(res.eager_base, res.eager_lora),
            f"{tok_s(res.eager_base)} / {tok_s(res.eager_lora)}",
        ],
        [
            "CUDA graph replay" + (f" ({res.graph_note})" if res.graph_note else ""),
            f"{res.graph_base * 1e3:.2f}" if math.isfinite(res.graph_base) else "—",
            f"{res.graph_lora * 1e3:.2f}" if math.isfinite(res.graph_lora) else "—",
            overhead(res.graph_base, res.graph_lora),
            f"{tok_s(res.graph_base)} / {tok_s(res.graph_lora)}",
        ],
    ]
    shape = "Llama-2-7B-shaped" if not env.smoke else "tiny"
    lines = [
        "### Decode step with and without adapters",
        "",
        f"Random-weight {shape} `LlamaForCausalLM`, {res.layers} layers, batch {res.batch}, "
        f"context {res.context} tokens per sequence (paged, block {env.grid.block_size}, "
        f"{res.num_kv_blocks} blocks, scattered), forward + logits; *with adapters*: "
        f"{res.adapters} distinct rank-{res.rank} adapters on q,k,v,o,gate,up,down (slots "
        f"stored at rank {res.max_rank}); *base*: the same step with `LoraMeta.active=False`. "
        f"Target: overhead < {TARGET_OVERHEAD:.0%} (Punica reports a few percent).",
        "",
        markdown_table(
            ["timing", "base ms", "with adapters ms", "overhead", "tokens/s base / lora"], body
        ),
    ]
    if not res.lora_changes_logits:
        lines += ["", "WARNING: the adapters did not change the logits (LoRA path not taken?)."]
    lines += [f"\nNote: {n}" for n in res.notes]
    return lines


def attention_section(pre: list[AttnRow], dec: list[AttnRow], env: Env) -> list[str]:
    names = {
        "twin": "per-seq SDPA (current)",
        "no_copy": "per-seq SDPA, no KV copies",
        "masked": "packed SDPA, block-diag mask",
        "flex": "FlexAttention (compiled)",
        "flash": "flash-attn varlen",
    }
    pre_body = []
    for r in pre:
        cells = []
        for v in PREFILL_VARIANTS:
            t = r.times.get(v)
            cells.append(fmt_us(t) if t is not None else f"— ({r.notes.get(v, 'n/a')})")
        best = min(r.times, key=lambda k: r.times[k]) if r.times else "—"
        tflops = r.flops / r.times[best] / 1e12 if r.times else math.nan
        pre_body.append(
            [r.label, *cells, names.get(best, best), fmt_num(tflops), err_flag(r.errors, env.tol)]
        )
    dec_body = []
    for r in dec:
        floor, _ = env.floor(r.nbytes, r.flops)
        k = r.times.get("kernel", math.nan)
        dense = r.times.get("dense")
        dec_body.append(
            [
                r.label,
                fmt_us(k),
                fmt_us(r.times.get("twin")),
                fmt_us(dense) if dense is not None else f"— ({r.notes.get('dense', 'n/a')})",
                fmt_us(floor),
                fmt_num(r.nbytes / k / 1e9),
                fmt_x(k / floor),
                fmt_x(r.times.get("twin", math.nan) / k),
                err_flag(r.errors, env.tol),
            ]
        )
    cfg = env.cfg
    kernel = "Triton" if env.ops.backend == "triton" else f"{env.ops.backend} (twin)"
    return [
        "### Attention",
        "",
        f"Prefill: {env.grid.prefill_tokens} packed tokens, {cfg.num_heads} query / "
        f"{cfg.num_kv_heads} KV heads of {cfg.head_dim}, causal. *current* = "
        "`torch_ref.prefill_attention` (SDPA per sequence, K/V copied by `repeat_interleave`); "
        "*packed* = one SDPA over all tokens with a block-diagonal causal mask (built per call); "
        "FlexAttention with a document mask (block mask prebuilt, compile not timed). TFLOP/s of "
        "the best, counting causal FLOPs only; max err against *current*.",
        "",
        markdown_table(
            [
                "prompts",
                *(names[v] + " µs" for v in PREFILL_VARIANTS),
                "best",
                "TFLOP/s",
                "max err",
            ],
            pre_body,
        ),
        "",
        f"Paged decode attention: one query per sequence, blocks of {env.grid.block_size} "
        f"scattered at random; *kernel* = {kernel} `paged_decode_attention`, *twin* = "
        "`torch_ref.paged_decode_attention` (gathers the blocks), *dense* = SDPA over K/V already "
        "contiguous (no paging; equal lengths only). Floor = K/V bytes read once / copy rate.",
        "",
        markdown_table(
            [
                "batch x context",
                "kernel µs",
                "twin µs",
                "dense SDPA µs",
                "floor µs",
                "kernel GB/s",
                "x floor",
                "twin / kernel",
                "max err",
            ],
            dec_body,
        ),
    ]


def target_lines(
    lora: list[LoraRow] | None, step: StepResult | None, failures: Sequence[str] = ()
) -> list[str]:
    lines = ["### Targets", ""]
    if step is not None:
        for label, base, lo in (
            ("eager", step.eager_base, step.eager_lora),
            ("CUDA graph", step.graph_base, step.graph_lora),
        ):
            if math.isfinite(base) and math.isfinite(lo):
                ov = lo / base - 1
                verdict = "met" if ov < TARGET_OVERHEAD else "MISSED"
                lines.append(
                    f"- decode step with {step.adapters} distinct rank-{step.rank} adapters vs "
                    f"none, {label}: {ov * 100:+.1f}% (target < {TARGET_OVERHEAD:.0%}): {verdict}"
                )
    if lora:
        for mode in ("bgmv", "sgmv"):
            sel = [r for r in lora if r.case.mode == mode and math.isfinite(r.x_floor)]
            if not sel:
                continue
            ok = sum(r.x_floor <= TARGET_FLOOR_X for r in sel)
            big = [r for r in sel if r.floor_s >= BIG_FLOOR_S]
            ok_big = sum(r.x_floor <= TARGET_FLOOR_X for r in big)
            worst = max(sel, key=lambda r: r.x_floor)
            c = worst.case
            lines.append(
                f"- {mode.upper()} within {TARGET_FLOOR_X:g}x of the floor: {ok}/{len(sel)} rows "
                f"({ok_big}/{len(big)} of those with a floor >= {BIG_FLOOR_S * 1e6:.0f} µs, where "
                f"launch latency matters less); median {statistics.median(r.x_floor for r in sel):.2f}x, "
                f"worst {worst.x_floor:.2f}x ({c.group}, {shape_label(c)}, {c.adapters} adapters "
                f"{c.popularity}, ranks {c.rank_label})"
            )
    lines += [f"- {f}" for f in failures]
    return lines


@dataclass
class Results:
    lora: list[LoraRow] | None = None
    prefill: list[AttnRow] | None = None
    decode_attn: list[AttnRow] | None = None
    step: StepResult | None = None
    failures: list[str] = field(default_factory=list)


def command_line(argv: Sequence[str]) -> str:
    """The command as a reader should run it (output-file options left out)."""
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--md", "--json"):
            skip = True
        elif not a.startswith(("--md=", "--json=")):
            keep.append(a)
    return " ".join(["python", "bench/kernels.py", *keep])


def render(res: Results, env: Env, argv: Sequence[str]) -> str:
    launches = "CUDA graph replay" if env.args.graphs else "eager launches behind a GPU sleep"
    timing = (
        f"median of {env.args.reps} runs after {env.args.warmup} warm-ups, CUDA events, L2 "
        f"flushed before each run, {launches}"
    )
    if env.smoke:
        timing = f"median wall time of {env.args.reps} runs after {env.args.warmup} warm-up"
    head = [
        f"Command: `{command_line(argv)}` ({today()}).",
        "",
        f"- Device: {device_line(env)}; {versions()}; dtype {str(env.dtype).removeprefix('torch.')}; "
        f"kernels: {env.ops.backend}; loraplex from `{Path(loraplex.__file__).parent}`.",
        f"- Measured ceilings: copy {fmt_rate(env.copy_bw, 'B')} (bytes read + written), "
        f"matmul {fmt_rate(env.mm_rate, 'FLOP')} ({str(env.dtype).removeprefix('torch.')}, "
        "random data).",
        f"- Kernel times: {timing}. µs unless noted.",
    ]
    if env.smoke:
        head = [
            f"**CPU SMOKE RUN: {env.ops.backend} kernels on tiny shapes, wall-clock timing. "
            "Not for the docs.**",
            "",
            *head,
        ]
    parts = [*head, ""]
    parts += target_lines(res.lora, res.step, res.failures) + [""]
    if res.lora is not None:
        parts += lora_section(res.lora, env) + [""]
    if res.step is not None:
        parts += decode_section(res.step, env) + [""]
    if res.prefill is not None and res.decode_attn is not None:
        parts += attention_section(res.prefill, res.decode_attn, env) + [""]
    return "\n".join(parts).strip() + "\n"


def to_json(res: Results, env: Env) -> dict[str, Any]:
    return {
        "device": device_line(env),
        "versions": versions(),
        "date": today(),
        "smoke": env.smoke,
        "dtype": str(env.dtype),
        "copy_bytes_per_s": env.copy_bw,
        "matmul_flop_per_s": env.mm_rate,
        "lora": [dataclasses.asdict(r) for r in res.lora or []],
        "prefill_attention": [dataclasses.asdict(r) for r in res.prefill or []],
        "decode_attention": [dataclasses.asdict(r) for r in res.decode_attn or []],
        "decode_step": dataclasses.asdict(res.step) if res.step else None,
        "failures": res.failures,
    }


def emit(res: Results, env: Env, argv: Sequence[str]) -> str:
    """Write what is known so far to --md / --json (called after every part)."""
    body = render(res, env, argv)
    if env.args.md:
        Path(env.args.md).write_text(f"## {SECTION}\n\n{body}")
    if env.args.json:
        Path(env.args.json).write_text(json.dumps(to_json(res, env), indent=1, default=str))
    return body


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, torch twins (< 60 s)")
    p.add_argument("--quick", action="store_true", help="a smaller GPU grid")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--reps", type=int, default=None, help="timed runs per measurement (default 50)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 5)")
    p.add_argument("--no-graphs", dest="graphs", action="store_false", help="time eager launches")
    p.add_argument("--no-flex", dest="flex", action="store_false", help="skip FlexAttention")
    p.add_argument(
        "--max-rank", type=int, default=None, help="slot storage rank (default 64; smoke 8)"
    )
    p.add_argument("--layers", type=int, default=None, help="decode step layers (default 32)")
    p.add_argument("--batch", type=int, default=None, help="decode step batch (default 32)")
    p.add_argument(
        "--context-len", type=int, default=None, help="decode step context (default 512)"
    )
    p.add_argument("--decode-adapters", type=int, default=None, help="default: the batch")
    p.add_argument("--decode-rank", type=int, default=None, help="default 16")
    p.add_argument("--step-iters", type=int, default=None, help="timed decode steps (default 30)")
    p.add_argument("--zipf-alpha", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--md", help="write the docs section (markdown) here after every part")
    p.add_argument("--json", help="write all numbers here after every part")
    p.add_argument("--write-docs", action="store_true", help=f"replace section {SECTION!r}")
    p.add_argument(
        "--docs-from",
        nargs="+",
        metavar="FILE",
        help="only put these --md files (merged, one per run) into docs/benchmarks.md",
    )
    a = p.parse_args(argv)
    smoke = a.smoke
    defaults = {
        "reps": 3 if smoke else 50,
        "warmup": 1 if smoke else 5,
        "layers": 2 if smoke else 32,
        "batch": 4 if smoke else 32,
        "context_len": 24 if smoke else 512,
        "decode_rank": 4 if smoke else 16,
        "step_iters": 3 if smoke else 30,
    }
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.decode_adapters is None:
        a.decode_adapters = a.batch
    a.parts = [x.strip() for x in a.only.split(",") if x.strip()]
    if unknown := set(a.parts) - set(PARTS):
        p.error(f"--only: unknown parts {sorted(unknown)}; choose from {PARTS}")
    if smoke and a.write_docs:
        p.error("--smoke numbers are not GPU measurements and never go into the docs")
    return a


def make_env(a: argparse.Namespace) -> Env:
    if a.smoke:
        dev, dtype = torch.device("cpu"), torch.float32
        timer: Timer = CpuTimer(a.reps, a.warmup)
        grid, raw = SMOKE_GRID, TINY
        torch.set_num_threads(min(2, torch.get_num_threads()))
    else:
        dev, dtype = torch.device("cuda", torch.cuda.current_device()), getattr(torch, a.dtype)
        timer = CudaTimer(a.reps, a.warmup, a.graphs)
        grid, raw = (QUICK_GRID if a.quick else FULL_GRID), LLAMA2_7B
    cfg = ModelConfig.from_hf_dict({**raw, "num_hidden_layers": a.layers})
    if a.max_rank is not None:
        grid = dataclasses.replace(grid, max_rank=a.max_rank)
    top = max(a.decode_rank, *(r for p in grid.rank_patterns for r in p), *grid.load_ranks)
    if top > grid.max_rank:
        raise SystemExit(f"rank {top} exceeds the slot storage rank {grid.max_rank} (--max-rank)")
    return Env(a.smoke, dev, dtype, get_ops(dev), timer, grid, cfg, a)  # type: ignore[arg-type]


def run_part(part: str, env: Env, res: Results) -> None:
    if part == "lora":
        res.lora = bench_lora(env)
    elif part == "attn":
        res.prefill = bench_prefill_attention(env)
        res.decode_attn = bench_decode_attention(env)
    elif part == "decode":
        res.step = bench_decode(env)


def section_parts(text: str) -> tuple[str, list[str]]:
    """A section made by --md: (header before the first ``### ``, the ``### `` subsections)."""
    if text.startswith("## "):
        text = text.split("\n", 1)[1]
    head, *subs = re.split(r"(?m)^(?=### )", text)
    return head.strip(), [x.strip() for x in subs]


def merge_sections(texts: Sequence[str]) -> str:
    """One docs section from several runs (e.g. ``--only lora`` and ``--only attn,decode``):
    the first run's header with every run's command, the target bullets of all runs, and the
    other subsections in order (a later run's copy of a subsection replaces an earlier one)."""
    heads, subs, targets = [], {}, []
    for text in texts:
        head, parts = section_parts(text)
        heads.append(head)
        for sub in parts:
            title = sub.split("\n", 1)[0]
            if title == "### Targets":
                targets += [ln for ln in sub.splitlines() if ln.startswith("- ")]
            else:
                subs[title] = sub
    commands = [ln for h in heads for ln in h.splitlines() if ln.startswith("Command: ")]
    rest = [ln for ln in heads[0].splitlines() if not ln.startswith("Command: ")]
    out = ["\n".join(commands), "\n".join(rest).strip(), "### Targets\n\n" + "\n".join(targets)]
    return "\n\n".join([*out, *subs.values()]).strip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.docs_from:
        texts = [Path(f).read_text() for f in a.docs_from]
        if any("CPU SMOKE RUN" in t for t in texts):
            print("bench/kernels.py: refusing to put --smoke output into the docs", file=sys.stderr)
            return 2
        replace_doc_section(SECTION, merge_sections(texts))
        print(f"docs/benchmarks.md: section {SECTION!r} replaced from {', '.join(a.docs_from)}")
        return 0
    if not a.smoke and not torch.cuda.is_available():
        print(
            "bench/kernels.py: the full benchmark needs a CUDA GPU (none visible to torch "
            f"{torch.__version__}). Run it on the GPU machine, or use --smoke here for a quick "
            "CPU check of the code paths.",
            file=sys.stderr,
        )
        return 2
    torch.manual_seed(a.seed)
    env = make_env(a)
    if not a.smoke and env.ops.backend != "triton":
        log(f"WARNING: kernels are {env.ops.backend!r}, not Triton (LORAPLEX_DISABLE_TRITON set?)")
    t0 = time.perf_counter()
    measure_ceilings(env)
    log(
        f"{device_line(env)}; copy {fmt_rate(env.copy_bw, 'B')}, "
        f"matmul {fmt_rate(env.mm_rate, 'FLOP')}"
    )
    res = Results()
    for part in a.parts:
        log(f"[{time.perf_counter() - t0:.0f} s] part {part}")
        try:
            run_part(part, env, res)
        except Exception as e:  # noqa: BLE001 - keep the other parts' numbers
            traceback.print_exc()
            res.failures.append(f"part {part!r} FAILED: {type(e).__name__}: {str(e)[:200]}")
        if env.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        emit(res, env, argv)
    body = emit(res, env, argv)
    print(body)
    for line in target_lines(res.lora, res.step, res.failures)[2:]:
        log(line)
    log(f"total {time.perf_counter() - t0:.0f} s")
    if a.write_docs:
        replace_doc_section(SECTION, body)
        log(f"docs/benchmarks.md: section {SECTION!r} replaced")
    return 0


if __name__ == "__main__":
    sys.exit(main())
