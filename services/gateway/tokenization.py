"""Tokenizer work behind ``/tokenize`` and ``/detokenize``, run in a worker thread (as in prepare.py).

Chat messages are rendered exactly as the chat route renders them (``Tokenizer.encode_chat``:
the template already holds any BOS it wants); detokenization keeps special tokens, as vLLM's does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from loraplex.gateway.errors import InvalidParamError
from loraplex.text.tokenizer import Tokenizer


async def tokenize_text(tokenizer: Tokenizer, prompt: str, add_special_tokens: bool) -> list[int]:
    """The ids of ``prompt`` (with the tokenizer's BOS/EOS when ``add_special_tokens``)."""
    return await asyncio.to_thread(tokenizer.encode, prompt, add_special_tokens)


async def tokenize_chat(
    tokenizer: Tokenizer,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
    add_special_tokens: bool,
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
    continue_final_message: bool = False,
) -> list[int]:
    """The ids of ``messages`` (and ``tools``) rendered with the chat template; without
    ``add_special_tokens`` these are the ids the chat route submits."""
    render = (add_generation_prompt, tools, template_kwargs, continue_final_message)
    if not add_special_tokens:
        return await asyncio.to_thread(tokenizer.encode_chat, messages, *render)

    def render_and_encode() -> list[int]:
        text = tokenizer.apply_chat_template(messages, *render)
        return tokenizer.encode(text, add_special_tokens=True)

    return await asyncio.to_thread(render_and_encode)


async def detokenize(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The text of ``ids``, special tokens included; an id outside the vocabulary is a 400."""
    vocab = tokenizer.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise InvalidParamError(
            f"token id {bad} is outside the vocabulary (ids 0 to {vocab - 1})",
            "tokens",
            "invalid_token_id",
        )
    return await asyncio.to_thread(tokenizer.decode, ids, False)


async def token_strings(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """Each id's vocabulary string (vLLM's ``return_token_strs``)."""

    def lookup() -> list[str]:
        return [tokenizer.id_to_token(t) or "" for t in ids]

    return await asyncio.to_thread(lookup)
