"""The result tables (tokens/s, kept runs, greedy agreement) and the target lines."""

from __future__ import annotations

from common import markdown_table

from .measure import Row, agreement
from .timing import Timed, fmt_run

TARGET_VS_HF = 3.0  # loraplex / HF+PEFT tokens/s at the largest adapter count
TARGET_VS_ONE = 0.8  # loraplex at the largest adapter count / loraplex at 1 adapter


def tok_s(t: Timed, generated: int) -> float:
    return generated / t.seconds


def results_table(rows: list[Row], generated: int) -> str:
    one = next((r for r in rows if r.adapters == 1), None)
    headers = [
        "adapters",
        "loraplex tok/s",
        "HF+PEFT tok/s",
        "per-adapter loop tok/s",
        "loraplex/HF",
        "loraplex vs own 1-adapter",
    ]
    body = []
    for r in rows:
        lp, hf, loop = (tok_s(t, generated) for t in (r.loraplex, r.hf, r.loop))
        vs_one = f"{lp / tok_s(one.loraplex, generated):.2f}x" if one else "n/a"
        body.append(
            [str(r.adapters), f"{lp:.0f}", f"{hf:.0f}", f"{loop:.0f}", f"{lp / hf:.2f}x", vs_one]
        )
    return markdown_table(headers, body)


def agreement_table(rows: list[Row]) -> str:
    body = []
    for r in rows:
        tok_hf, seq_hf = agreement(r.loraplex.tokens, r.hf.tokens)
        tok_loop, seq_loop = agreement(r.loraplex.tokens, r.loop.tokens)
        body.append(
            [
                str(r.adapters),
                f"{tok_hf:.1f}%",
                f"{seq_hf:.1f}%",
                f"{tok_loop:.1f}%",
                f"{seq_loop:.1f}%",
            ]
        )
    headers = ["adapters", "tokens = HF", "requests = HF", "tokens = loop", "requests = loop"]
    return markdown_table(headers, body)


def runs_table(rows: list[Row]) -> str:
    """Wall seconds of the kept runs, with the box's CPU pressure during each."""
    headers = ["adapters", "loraplex s", "HF+PEFT s", "per-adapter loop s"]
    body = [[str(r.adapters), *(fmt_run(t) for t in (r.loraplex, r.hf, r.loop))] for r in rows]
    return markdown_table(headers, body)


def target_lines(rows: list[Row], generated: int) -> list[str]:
    top = rows[-1]
    lp_top = tok_s(top.loraplex, generated)
    vs_hf = lp_top / tok_s(top.hf, generated)
    lines = [
        f"- loraplex >= {TARGET_VS_HF:g}x HF+PEFT tokens/s at {top.adapters} adapters: "
        f"{vs_hf:.2f}x, {'met' if vs_hf >= TARGET_VS_HF else 'MISSED'}",
    ]
    one = next((r for r in rows if r.adapters == 1), None)
    if one is not None:
        vs_one = lp_top / tok_s(one.loraplex, generated)
        lines.append(
            f"- loraplex at {top.adapters} adapters >= {TARGET_VS_ONE:g}x loraplex at 1 adapter: "
            f"{vs_one:.2f}x, {'met' if vs_one >= TARGET_VS_ONE else 'MISSED'}"
        )
    return lines
