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
import dataclasses
import importlib.util
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

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

from common import replace_doc_section  # noqa: E402
from kernelbench.attention import bench_decode_attention, bench_prefill_attention  # noqa: E402
from kernelbench.config import (  # noqa: E402
    FULL_GRID,
    LLAMA2_7B,
    PARTS,
    QUICK_GRID,
    SECTION,
    SMOKE_GRID,
    TINY,
    log,
)
from kernelbench.decode_step import bench_decode  # noqa: E402
from kernelbench.env import Env, device_line, measure_ceilings  # noqa: E402
from kernelbench.fmt import fmt_rate  # noqa: E402
from kernelbench.lora_variants import bench_lora  # noqa: E402
from kernelbench.report import Results, emit, merge_sections, target_lines  # noqa: E402
from kernelbench.timing import CpuTimer, CudaTimer, Timer  # noqa: E402

from loraplex.kernels.dispatch import get_ops  # noqa: E402
from loraplex.model.config import ModelConfig  # noqa: E402


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
