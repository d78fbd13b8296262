"""vLLM's ``bad_words``: each word as the token sequences that would write it, at the start of
the text and after a space, for the engine to ban (``engine/banned_tokens.py``).

As vLLM: a word is encoded without special tokens as it stands (leading spaces stripped), and
again with one leading space when that gives another first token and as many tokens (a new word
token, as BPE vocabularies have).  Plain Python over the tokenizer's ``encode``.
"""

from __future__ import annotations

from collections.abc import Callable

from loraplex.gateway.errors import InvalidParamError

MAX_BAD_WORDS = 128  # words; each gives at most two forms (the engine's bound is on forms)
MAX_BAD_WORD_CHARS = 256


def bad_words_token_ids(
    words: list[str] | None, encode: Callable[[str], list[int]]
) -> tuple[tuple[int, ...], ...]:
    """The token sequences to ban for ``words``; ``encode(text)`` without special tokens."""
    if not words:
        return ()
    if len(words) > MAX_BAD_WORDS:
        raise InvalidParamError(f"bad_words: at most {MAX_BAD_WORDS} words", "bad_words")
    forms: list[tuple[int, ...]] = []
    for word in words:
        bare = word.lstrip()
        if not bare or len(bare) > MAX_BAD_WORD_CHARS:
            raise InvalidParamError(
                f"bad_words: each word must hold 1 to {MAX_BAD_WORD_CHARS} characters", "bad_words"
            )
        plain = tuple(encode(bare))
        forms.append(plain)
        spaced = tuple(encode(" " + bare))
        if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
            forms.append(spaced)
    return tuple(dict.fromkeys(forms))
