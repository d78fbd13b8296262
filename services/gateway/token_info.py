"""Tokens as the answers name them: ``TokenLogprobs`` (ids and numbers, as the workers send
them) turned into text with the tokenizer, for every API's ``logprobs`` and prompt logprobs."""

from __future__ import annotations

from dataclasses import dataclass, replace

from loraplex.text.tokenizer import Tokenizer
from loraplex.token_logprobs import TokenLogprobs


@dataclass(frozen=True)
class TokenInfo:
    """One token for OpenAI ``logprobs``: its text, logprob and top alternatives.  An echoed
    prompt's first token has neither (nothing before it scores it)."""

    token: str
    logprob: float | None
    top: list[tuple[str, float]] | None
    token_id: int | None = None
    top_ids: tuple[int, ...] = ()  # the ids of ``top``, in its order
    rank: int | None = None  # vLLM's rank in the whole vocabulary (1: the most likely)


def token_info(tok: Tokenizer, lp: TokenLogprobs) -> TokenInfo:
    """A token with its alternatives, each decoded on its own (as vLLM and OpenAI show them)."""
    top = [(tok.token_text(t), v) for t, v in lp.top]
    ids = tuple(t for t, _ in lp.top)
    return TokenInfo(tok.token_text(lp.token_id), lp.logprob, top, lp.token_id, ids, lp.rank)


def as_token_ids(info: TokenInfo) -> TokenInfo:
    """vLLM's ``return_tokens_as_token_ids``: each token named ``token_id:<id>``, so a token
    that is part of a character (its text alone is not valid UTF-8) can still be told apart."""
    if info.token_id is None:
        return info
    top = (
        None
        if info.top is None
        else [(f"token_id:{t}", lp) for t, (_, lp) in zip(info.top_ids, info.top, strict=False)]
    )
    return replace(info, token=f"token_id:{info.token_id}", top=top)


def unscored(tok: Tokenizer, token_id: int) -> TokenInfo:
    """A token without logprobs (a prompt's first: nothing before it scores it)."""
    return TokenInfo(tok.token_text(token_id), None, None, token_id)


def prompt_infos(
    tok: Tokenizer, prompt_ids: list[int], scored: list[TokenLogprobs]
) -> list[TokenInfo]:
    """Every prompt token, in order: the first unscored, then ``scored`` (the workers' prompt
    logprobs, tokens 1..) with their alternatives."""
    return [unscored(tok, prompt_ids[0]), *(token_info(tok, lp) for lp in scored)]


def with_itself(info: TokenInfo) -> TokenInfo:
    """A prompt token's alternatives with the token itself among them (first when it is not
    one of the most likely), as vLLM's echoed ``logprobs`` report them."""
    if info.top is None or info.logprob is None or info.token_id in info.top_ids:
        return info
    top = [(info.token, info.logprob), *info.top]
    ids = (info.token_id, *info.top_ids) if info.token_id is not None else info.top_ids
    return replace(info, top=top, top_ids=ids)


def trimmed(info: TokenInfo, k: int) -> TokenInfo:
    """``info`` with at most ``k`` alternatives: the workers send the most any view asked for
    (``echo`` with ``logprobs`` and ``prompt_logprobs`` share one computation)."""
    if info.top is None or len(info.top) <= k:
        return info
    return replace(info, top=info.top[:k], top_ids=info.top_ids[:k])
