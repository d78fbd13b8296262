"""The timed runs of ``bench/engine_gpu.py``: loraplex per adapter pattern, graphs and eager,
and HF transformers + PEFT, all on one device."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loraplex import LLM, SamplingParams

from .gpu_model import DTYPES
from .gpu_options import GpuArgs
from .workload import Tokens, assign


@dataclass
class Run:
    system: str  # "loraplex" | "HF"
    mode: str  # "graphs" | "eager" | "PEFT"
    pattern: str  # "base", "1 adapter", "32 distinct"
    output_len: int
    first_s: float  # the first run of this pattern after start-up (and warm-up)
    best_s: float  # fastest of the runs after it (the first itself when alone)
    prefill_s: float | None = None  # the same requests with max_tokens=1
    tokens: Tokens = field(default_factory=list)

    def tok_s(self, requests: int, first: bool = False) -> float:
        return requests * self.output_len / (self.first_s if first else self.best_s)

    def decode_step_ms(self) -> float | None:
        if self.prefill_s is None:
            return None
        return (self.best_s - self.prefill_s) / (self.output_len - 1) * 1e3


def patterns(names: list[str], n: int) -> list[tuple[str, list[str | None]]]:
    return [
        ("base", [None] * n),
        ("1 adapter", [names[0]] * n),
        (f"{len(names)} distinct", list(assign(n, names))),
    ]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Tokens], device: str) -> tuple[float, Tokens]:
    _sync(device)
    start = time.perf_counter()
    tokens = fn()
    _sync(device)
    return time.perf_counter() - start, tokens


def build_loraplex(model_dir: Path, paths: dict[str, Path], args: GpuArgs) -> LLM:
    llm = LLM(
        model_dir,
        dtype=args.dtype,
        device=args.device,
        max_loras=args.adapters,
        max_lora_rank=max(64, args.rank),
        max_num_seqs=args.requests,
        max_model_len=args.prompt_len + args.output_len + 16,
        enable_prefix_caching=False,
    )
    for name, path in paths.items():
        llm.add_lora(name, path)
    return llm


@contextmanager
def eager(llm: LLM) -> Iterator[None]:
    """Decode steps without the captured graphs (what ``enforce_eager`` gives), for a while."""
    runner = llm.engine.runner
    graphs, runner.decode_graphs = runner.decode_graphs, None
    try:
        yield
    finally:
        runner.decode_graphs = graphs


def _generate(llm: LLM, prompts: Tokens, loras: list[str | None], n: int) -> Tokens:
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    return [o.token_ids for o in llm.generate(prompts, params, lora=loras)]


def loraplex_runs(llm: LLM, prompts: Tokens, names: list[str], args: GpuArgs) -> list[Run]:
    """Per mode and pattern: the first run, ``repeats`` more (best kept), one prefill-only."""
    graphs = llm.engine.runner.decode_graphs is not None
    runs = []
    for mode in ("graphs", "eager") if graphs else ("eager",):
        with eager(llm) if mode == "eager" else _nothing():
            for label, loras in patterns(names, len(prompts)):
                gen = lambda n, lo=loras: lambda: _generate(llm, prompts, lo, n)  # noqa: E731
                first, tokens = timed(gen(args.output_len), args.device)
                best = min(timed(gen(args.output_len), args.device)[0] for _ in range(args.repeats))
                prefill, _ = timed(gen(1), args.device)
                runs.append(
                    Run("loraplex", mode, label, args.output_len, first, best, prefill, tokens)
                )
                print(
                    f"  loraplex {mode:6} {label:12} first {first:.2f}s best {best:.2f}s",
                    flush=True,
                )
    return runs


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def build_hf(model_dir: Path, paths: dict[str, Path], args: GpuArgs) -> torch.nn.Module:
    """One PeftModel holding every adapter, in the benchmark dtype on the benchmark device."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[args.dtype])
    base = base.to(args.device)
    items = iter(paths.items())
    first, first_path = next(items)
    model = PeftModel.from_pretrained(base, str(first_path), adapter_name=first)
    for name, path in items:
        model.load_adapter(str(path), adapter_name=name)
    model.generation_config.eos_token_id = None  # greedy picks never masked, as ignore_eos
    return model.eval()


@torch.inference_mode()
def _hf_generate(model, prompts: Tokens, loras: list[str | None], n: int, device: str) -> Tokens:  # type: ignore[no-untyped-def]
    """Equal-length prompts: one batch, no padding; base rows via PEFT's ``disable_adapter``."""
    from transformers import GenerationConfig

    ids = torch.tensor(prompts, device=device)
    config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "generation_config": config}
    if all(lo is None for lo in loras):
        with model.disable_adapter():
            out = model.generate(**kwargs)
    else:
        out = model.generate(**kwargs, adapter_names=loras)
    return out[:, ids.shape[1] :].tolist()


def hf_runs(model, prompts: Tokens, names: list[str], args: GpuArgs) -> list[Run]:  # type: ignore[no-untyped-def]
    """HF + PEFT, base and every adapter distinct: one short warm-up, then one timed run each."""
    runs = []
    for label, loras in (patterns(names, len(prompts))[0], patterns(names, len(prompts))[2]):
        _hf_generate(model, prompts, loras, 2, args.device)
        fn = lambda lo=loras: _hf_generate(model, prompts, lo, args.hf_output_len, args.device)  # noqa: E731
        seconds, tokens = timed(fn, args.device)
        runs.append(Run("HF", "PEFT", label, args.hf_output_len, seconds, seconds, None, tokens))
        print(f"  HF+PEFT {label:12} {seconds:.2f}s", flush=True)
    return runs
