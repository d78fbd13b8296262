"""Structured outputs: what a grammar mask costs per generated token, next to unconstrained decoding.

    python bench/structured.py [--batches 1,32] [--tokens 64] [--hidden 512] [--layers 6]
                               [--repeats 3] [--write-docs]

Each run generates ``--tokens`` tokens for every one of ``batch`` requests (32-token random
prompts, one ``LLM.generate`` call, sampling at temperature 1 with a seed).  The peer is the same
batch with no constraint (``ignore_eos``).  The constraints are chosen so that every request also
runs to ``--tokens`` tokens on a random model: a regex (``[a-z ]{400}``), and a JSON schema whose
string field must be at least 1000 characters long.  So each row generates the same number of tokens, and
the tokens/s ratio is the cost of the masks (bitmask fill per row on the host, the masked copy of
the logits and the matcher's advance).  Grammar compile time is measured apart: the first request
with a new schema pays it, later ones hit xgrammar's cache.  Engine-level, CPU, fp32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    machine_line,
    markdown_table,
    publish,
    today,
    unshadow_packages,
)
from enginebench.workload import model_spec  # noqa: E402

from loraplex import LLM, SamplingParams  # noqa: E402
from loraplex.structured_outputs import StructuredOutputsParams  # noqa: E402
from loraplex.tooling.demo import write_demo_tokenizer, write_random_model  # noqa: E402

unshadow_packages()  # xgrammar imports transformers

SECTION = "Structured outputs (bench/structured.py)"
SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 1000}, "done": {"type": "boolean"}},
    "required": ["story", "done"],
}
BIG_SCHEMA = {  # for the compile time: nested objects, arrays, enums and bounds
    "type": "object",
    "properties": {
        f"field_{i}": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 10**6},
                "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 4},
                "name": {"type": "string", "maxLength": 32},
            },
            "required": ["id", "name"],
        }
        for i in range(12)
    },
}
CONSTRAINTS: dict[str, StructuredOutputsParams | None] = {
    "none (peer)": None,
    "regex [a-z ]{400}": StructuredOutputsParams(regex="[a-z ]{400}"),
    "JSON schema": StructuredOutputsParams(json=SCHEMA),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write-docs", action="store_true")
    a = p.parse_args(argv)
    a.batches = [int(x) for x in a.batches.split(",")]
    return a


def run(llm: LLM, batch: int, so: StructuredOutputsParams | None, a: argparse.Namespace) -> float:
    """Fastest of ``--repeats`` runs: generated tokens per second."""
    gen = torch.Generator().manual_seed(5)
    vocab = llm.engine.model_config.vocab_size
    prompts = [torch.randint(4, vocab, (32,), generator=gen).tolist() for _ in range(batch)]
    params = [
        SamplingParams(
            temperature=1.0,
            seed=i,
            max_tokens=a.tokens,
            ignore_eos=so is None,
            structured_outputs=so,
        )  # fmt: skip
        for i in range(batch)
    ]
    best = float("inf")
    for _ in range(a.repeats):
        start = time.perf_counter()
        outs = llm.generate(prompts, params)
        best = min(best, time.perf_counter() - start)
        lengths = {len(o.token_ids) for o in outs}
        assert lengths == {a.tokens}, f"every request must run to {a.tokens} tokens: {lengths}"
    return batch * a.tokens / best


def compile_ms(llm: LLM) -> tuple[float, float, float]:
    """The engine's first constrained request (xgrammar reads the tokenizer), then the first and
    second compile of BIG_SCHEMA (the second is xgrammar's cache), in ms."""
    grammars = llm.engine.grammars
    times = []
    for so in (
        StructuredOutputsParams(regex="a"),
        StructuredOutputsParams(json=BIG_SCHEMA),
        StructuredOutputsParams(json=BIG_SCHEMA),
    ):
        start = time.perf_counter()
        grammars.compile(so)
        times.append(1e3 * (time.perf_counter() - start))
    return times[0], times[1], times[2]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="loraplex-structured-bench-") as tmp:
        root = Path(tmp)
        vocab = write_demo_tokenizer(root, 2048)
        write_random_model(root, model_spec(a.hidden, a.layers, vocab, max_positions=512))
        llm = LLM(root, dtype="float32", device="cpu", max_num_seqs=max(a.batches))
        llm.generate([5, 6, 7], SamplingParams(max_tokens=4))  # warm-up
        setup_ms, first_ms, cached_ms = compile_ms(llm)
        for batch in a.batches:
            peer = None
            for name, so in CONSTRAINTS.items():
                tok_s = run(llm, batch, so, a)
                peer = peer or tok_s
                rows.append([str(batch), name, f"{tok_s:.0f}", f"{tok_s / peer:.2f}x"])
                print(f"batch {batch:>3} {name:<20} {tok_s:8.0f} tok/s", flush=True)
    body = "\n".join(
        [
            f"Command: `{' '.join(['python bench/structured.py', *argv])}`",
            f"({today()}; {machine_line()}).",
            "",
            f"Every request generates {a.tokens} tokens after a 32-token prompt (temperature 1, "
            f"seeded); random Llama (hidden {a.hidden}, {a.layers} layers, vocab {vocab}), fp32, "
            f"CPU, one `LLM.generate` per row, fastest of {a.repeats}. The constraints keep every "
            "request going to the token limit, so rows differ only in the masks' cost.",
            "",
            markdown_table(["batch", "constraint", "tok/s", "vs none"], rows),
            "",
            f"- Compile of a 12-object JSON schema (nested objects, arrays, enums, bounds): "
            f"{first_ms:.1f} ms the first time, {cached_ms:.2f} ms from xgrammar's cache. "
            f"An engine's first constrained request also pays {setup_ms:.0f} ms to load the "
            "tokenizer into xgrammar (importing transformers included); workers do both in a "
            "thread beside the engine loop, so running requests do not wait for them.",
        ]
    )
    print()
    publish(SECTION, body, a.write_docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
