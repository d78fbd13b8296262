"""The whole engine on a GPU: loraplex base / 1 adapter / N distinct adapters, CUDA graphs vs
eager, against HF transformers + PEFT, with greedy agreement, side by side in one run.

    python bench/engine_gpu.py [--device cuda] [--dtype bfloat16] [--layers 8] [--requests 64]
                               [--prompt-len 256] [--output-len 128] [--adapters 32] [--rank 16]
                               [--warmup full|light|off] [--no-hf] [--hf-output-len N]
                               [--md FILE] [--json FILE]
    python bench/engine_gpu.py --device cpu --dtype float32 --shape tiny --layers 2 \\
        --requests 8 --prompt-len 16 --output-len 4 --adapters 4     # smoke run, seconds

The default workload is the H200 baseline's (docs/benchmarks.md): a random-weight model with
Llama-2-7B layer shapes and 8 layers written locally, 64 requests of 256 prompt + 128 output
tokens, 32 rank-16 adapters on all 7 targets.  The engine starts as a worker does: CUDA graphs
captured, then the start-up warm-up (``engine/warmup_run.py``).  Each pattern's *first* run is
reported beside its best, so a compile on first use shows.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = str(Path(__file__).resolve().parent)
sys.path.insert(0, BENCH)
if importlib.util.find_spec("loraplex") is None:  # e.g. the GPU machine: no install, no venv
    sys.path.insert(0, str(REPO_ROOT / "shared"))

from common import unshadow_packages  # noqa: E402
from enginebench.gpu_model import write_checkpoint  # noqa: E402
from enginebench.gpu_options import parse_gpu_args  # noqa: E402
from enginebench.gpu_report import body, write_files  # noqa: E402
from enginebench.gpu_runs import build_hf, build_loraplex, hf_runs, loraplex_runs  # noqa: E402
from enginebench.workload import random_prompts  # noqa: E402

from loraplex.engine.warmup_run import warm_up  # noqa: E402

unshadow_packages()  # the HF + PEFT peer imports transformers


def device_line(device: str) -> str:
    versions = f"torch {torch.__version__}"
    if importlib.util.find_spec("triton") is not None:
        import triton

        versions += f", triton {triton.__version__}"
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        name = f"{p.name} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB)"
    else:
        name = "CPU"
    return f"- Device: {name}; {versions}."


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_gpu_args(argv, __doc__)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loraplex-engine-gpu-") as tmp:
        print("writing the checkpoint...", flush=True)
        spec, paths = write_checkpoint(Path(tmp), args)
        prompts = random_prompts(args.requests, args.prompt_len, spec.vocab_size)
        names = list(paths)
        t0 = time.perf_counter()
        llm = build_loraplex(Path(tmp) / "model", paths, args)
        graphs = llm.engine.runner.decode_graphs is not None
        print(f"engine up in {time.perf_counter() - t0:.1f}s (graphs: {graphs})", flush=True)
        report = warm_up(llm.engine, args.warmup, force=True)
        print(report.line(), flush=True)
        runs = loraplex_runs(llm, prompts, names, args)
        emit(runs, args, report.line(), argv, started, partial=args.hf)
        del llm
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if args.hf:
            runs += hf_runs(build_hf(Path(tmp) / "model", paths, args), prompts, names, args)
    print("\n" + emit(runs, args, report.line(), argv, started))
    return 0


def emit(
    runs: list, args, warmup: str, argv: list[str], started: float, partial: bool = False
) -> str:  # type: ignore[no-untyped-def]
    """Write --md/--json (also before the HF runs, so a time-out keeps loraplex's numbers)."""
    total = time.perf_counter() - started
    text = body(runs, args, [device_line(args.device)], warmup, argv)
    if partial:
        text += "\n\n(HF + PEFT runs not finished.)"
    text += f"\n\nWhole run {total:.0f} s (checkpoint writing and loading included)."
    write_files(text, runs, args, {"warmup": warmup, "total_s": total})
    return text


if __name__ == "__main__":
    raise SystemExit(main())
