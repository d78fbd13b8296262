"""How big an answer may get, checked before any work is done for it.

An answer's JSON grows with its choices, their tokens and their logprobs, none of which the body
limit bounds: a red team's 318 KB completion (32 prompts of 2,040 token ids, ``echo``,
``logprobs`` and ``prompt_logprobs`` 20) answered 123 MB and grew the gateway by 1.2 GB, and two
10 KB ones (``n`` 16) answered 65 MB each while every other tenant's stream stalled for seconds as
the gateway built and encoded them.  So a request whose answer could exceed
``LORAPLEX_GATEWAY_MAX_ANSWER_MB`` (32 MiB) is a 400 up front.  A stream's generated tokens go out
as they come (and what its client leaves unread is bounded: ``streams.py``), so only the parts a
stream sends whole count for it: the echoed prompt and the prompt logprobs.  Pure arithmetic.
"""

from __future__ import annotations

from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.prepare import Prepared

TOKEN_BYTES = 16  # a token's text in the JSON, escaped, with its separators (generously)
ENTRY_BYTES = 64  # one logprob entry: the token's text or id, its logprob, its rank or bytes
MIB = 1024 * 1024


def _per_token(alternatives: int | None) -> int:
    """Bytes of one token in the answer, with its logprob and ``alternatives`` more."""
    return TOKEN_BYTES + (0 if alternatives is None else ENTRY_BYTES * (1 + alternatives))


def answer_bytes(p: Prepared, stream: bool) -> int:
    """An upper estimate of what one choice of ``p`` adds to its answer (for a stream: what it
    sends in one piece)."""
    prompt = len(p.prompt_ids)
    size = 0 if stream else p.sampling.max_tokens * _per_token(p.sampling.logprobs)
    if p.echo is not None:
        size += prompt * _per_token(p.echo.logprobs)
    if p.prompt_logprobs is not None:
        size += prompt * ENTRY_BYTES * (1 + p.prompt_logprobs)
    return size


def check_answer_size(prepared: list[Prepared], n: int, stream: bool, limit_bytes: int) -> None:
    """A 400 when the answer of ``prepared`` (one per prompt, ``n`` choices each) could take more
    than ``limit_bytes`` (0: no limit)."""
    if limit_bytes <= 0:
        return
    size = n * sum(answer_bytes(p, stream) for p in prepared)
    if size <= limit_bytes:
        return
    what = "its prompt logprobs and echoed prompt" if stream else "its tokens and logprobs"
    raise InvalidParamError(
        f"the answer could take about {size / MIB:.0f} MiB ({what} for {len(prepared)} "
        f"prompt(s) x n={n}), more than this server answers at once "
        f"({limit_bytes / MIB:g} MiB, LORAPLEX_GATEWAY_MAX_ANSWER_MB); ask for fewer prompts, "
        "choices, tokens or logprobs" + ("" if stream else ", or stream the answer"),
        "max_tokens",
        "answer_too_large",
    )
