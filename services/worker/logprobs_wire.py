"""Engine ``TokenLogprobs`` <-> wire ``TokenLogprob`` (the protocol module stays torch-free)."""

from __future__ import annotations

from loraplex.engine.logprobs import TokenLogprobs
from loraplex.protocol import TokenLogprob


def to_wire(lp: TokenLogprobs) -> TokenLogprob:
    return TokenLogprob(lp.token_id, lp.logprob, [t for t, _ in lp.top], [v for _, v in lp.top])


def from_wire(lp: TokenLogprob) -> TokenLogprobs:
    return TokenLogprobs(
        lp.token_id, lp.logprob, tuple(zip(lp.top_ids, lp.top_logprobs, strict=True))
    )


def list_to_wire(lps: list[TokenLogprobs] | None) -> list[TokenLogprob] | None:
    return None if lps is None else [to_wire(lp) for lp in lps]


def list_from_wire(lps: list[TokenLogprob] | None) -> list[TokenLogprobs] | None:
    return None if lps is None else [from_wire(lp) for lp in lps]
