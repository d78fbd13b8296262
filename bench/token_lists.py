"""vLLM's ``allowed_token_ids`` and ``bad_words``: what the masks cost per engine step, next to a
step without them (the floor), at the sizes a hostile tenant may send.

    python bench/token_lists.py [--rows 64] [--vocab 128256] [--steps 20] [--write-docs]

Each row asks for the largest lists accepted (``MAX_ALLOWED_TOKEN_IDS`` allowed ids, and
``MAX_BAD_WORDS`` bad-word forms of ``MAX_BAD_WORD_TOKENS`` tokens) and has 100 output tokens.
Timed: ``apply_penalties`` on a ``[rows, vocab]`` fp32 logits tensor, the function every worker
step runs (CPU).  Three rows: no lists (the floor); the lists as served (each sequence builds its
mask and its word index at its first step, then reuses them: steps after the first); and the
lists rebuilt at every step (what the first step costs, and what every step cost before).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, publish, today  # noqa: E402

from loraplex.engine.penalties import apply_penalties  # noqa: E402
from loraplex.engine.sequence import Sequence as Seq  # noqa: E402
from loraplex.sampling_params import (  # noqa: E402
    MAX_ALLOWED_TOKEN_IDS,
    MAX_BAD_WORD_TOKENS,
    MAX_BAD_WORDS,
    SamplingParams,
)

SECTION = "Allowed token ids and bad words (bench/token_lists.py)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--vocab", type=int, default=128256)  # Llama 3's
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--write-docs", action="store_true")
    return p.parse_args(argv)


def sequences(rows: int, params: SamplingParams) -> list[Seq]:
    seqs = [Seq(f"r{i}", [1, 2, 3], params) for i in range(rows)]
    for s in seqs:
        s.output_token_ids = list(range(100))
    return seqs


def step_ms(logits: torch.Tensor, seqs: list[Seq], steps: int, rebuild: bool) -> float:
    apply_penalties(logits, seqs)  # the first step (builds the per-sequence state)
    t = time.perf_counter()
    for _ in range(steps):
        if rebuild:
            for s in seqs:
                s.disallowed, s.bad_word_index = None, None
        apply_penalties(logits, seqs)
    return (time.perf_counter() - t) / steps * 1000


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    torch.manual_seed(0)
    logits = torch.randn(a.rows, a.vocab)
    hostile = SamplingParams(
        max_tokens=200,
        allowed_token_ids=tuple(range(MAX_ALLOWED_TOKEN_IDS)),
        bad_words_token_ids=tuple(
            tuple(range(i, i + MAX_BAD_WORD_TOKENS)) for i in range(MAX_BAD_WORDS)
        ),
    )
    runs = [
        ("no lists (floor)", SamplingParams(max_tokens=200), False),
        ("largest lists, as served", hostile, False),
        ("largest lists, rebuilt every step", hostile, True),
    ]
    rows, floor = [], None
    for name, params, rebuild in runs:
        ms = step_ms(logits, sequences(a.rows, params), a.steps, rebuild)
        floor = floor or ms
        rows.append([name, f"{ms:.2f}", f"{ms / floor:.1f}x"])
        print(f"{name:<36} {ms:9.2f} ms per step", flush=True)
    body = "\n".join(
        [
            f"Command: `{' '.join(['python bench/token_lists.py', *argv])}`",
            f"({today()}; {machine_line()}).",
            "",
            f"`apply_penalties` on [{a.rows}, {a.vocab}] fp32 logits, every row with "
            f"{MAX_ALLOWED_TOKEN_IDS} allowed ids and {MAX_BAD_WORDS} bad-word forms of "
            f"{MAX_BAD_WORD_TOKENS} tokens (the most a request may send), 100 output tokens; "
            f"mean of {a.steps} steps after the first, CPU.",
            "",
            markdown_table(["lists", "ms per step", "vs floor"], rows),
            "",
            "The floor does no work (no row needs a mask: the logits pass through). As served, a "
            "step pays one masked copy of each listed row's logits, as any mask does; the first "
            "step of each sequence pays the rebuilt row's cost once. Until 2026-12-07 every step "
            "rebuilt every row's mask from its id list (the last row): one tenant's 64 requests "
            "would have slowed every batch they shared by that much.",
        ]
    )
    print()
    publish(SECTION, body, a.write_docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
