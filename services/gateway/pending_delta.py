"""Unread token deltas of one request, joined into one compact pending delta.

A client that reads slower than its request generates (or not at all) leaves its deltas in the
gateway.  Kept as they arrive, each costs its own message object, and every token's logprobs an
object per alternative: about 1.3 kB a token with 5 alternatives.  Joined, a backlog costs what
the completion itself is (8 bytes a token id, its text as UTF-8, 16 bytes an alternative), and is
handed to the reader as one ``TokenDelta`` equal to the ones it replaces read in turn.

Only a delta that continues the backlog exactly is joined (its first token follows the last
one's, its text starts where the last one's ends, logprobs on both or neither, one per token):
never a gap (a lost delta, repaired by the last one's ``full_text``), a replay (a migrated
request's new worker starts again at token 0), a delta with prompt logprobs, or a last delta.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterable
from dataclasses import fields

from loraplex.protocol import TokenDelta
from loraplex.token_logprobs import TokenLogprobs

# What the join copies; a field added to either (tests/gateway check) must be joined here too.
DELTA_FIELDS = frozenset(f.name for f in fields(TokenDelta))
LOGPROB_FIELDS = frozenset(f.name for f in fields(TokenLogprobs))

_SURROGATES = "surrogatepass"  # any str round-trips through UTF-8 with it
_OBJECT = 56  # an array or bytearray object's own header, near enough
_PENDING = 300  # the pending delta's own objects (its arrays and attributes)
# A delta as the subscription decoded it (tracemalloc, CPython 3.11): the message with its
# lists, each token id an int object, each logprob an object with a tuple per alternative.
_DELTA, _TOKEN, _LOGPROB, _ALTERNATIVE = 400, 36, 200, 130


def approx_bytes(d: TokenDelta) -> int:
    """About what a delta as decoded holds (its prompt logprobs aside: they come once, on the
    first delta, which the gateway reads before it answers)."""
    size = _DELTA + _TOKEN * len(d.token_ids) + sys.getsizeof(d.text)
    if d.full_text is not None:
        size += sys.getsizeof(d.full_text)
    for lp in d.logprobs or ():
        size += _LOGPROB + _ALTERNATIVE * len(lp.top)
    return size


def _continues(prev: TokenDelta | PendingDelta) -> bool:
    return isinstance(prev, PendingDelta) or _joinable(prev)


def _joinable(d: TokenDelta) -> bool:
    """A delta that may be part of a joined one: not a last one, counted, logprobs per token."""
    return (
        d.finish_reason is None
        and d.full_text is None
        and d.completion_tokens > 0
        and (d.logprobs is None or len(d.logprobs) == len(d.token_ids))
    )


def follows(prev: TokenDelta | PendingDelta, d: TokenDelta) -> bool:
    """Whether ``d`` continues ``prev`` exactly, so that one delta can stand for both."""
    return (
        _continues(prev)
        and _joinable(d)
        and d.prompt_logprobs is None
        and d.request_id == prev.request_id
        and d.completion_tokens - len(d.token_ids) == prev.completion_tokens
        and d.text_start == prev.text_start + _chars(prev)
        and (d.logprobs is None) == (prev.logprobs is None)
    )


def _chars(d: TokenDelta | PendingDelta) -> int:
    return d.chars if isinstance(d, PendingDelta) else len(d.text)


class PendingDelta:
    """Deltas that continue each other, packed: token ids, UTF-8 text, logprobs as arrays."""

    def __init__(self, first: TokenDelta) -> None:
        """Raises OverflowError or TypeError for a value the arrays cannot hold (then keep the
        delta as it is)."""
        packed = _Packed(first)
        self.request_id = first.request_id
        self.text_start = first.text_start
        self.prompt_logprobs = first.prompt_logprobs  # the first delta's, kept as they are
        self._ids = packed.ids
        self.logprobs = packed.logprobs
        self._text = bytearray(first.text.encode("utf-8", _SURROGATES))
        self.chars = len(first.text)
        self.cached_tokens = 0
        self._count(first)

    def join(self, d: TokenDelta) -> None:
        """Append ``d`` (``follows(self, d)``); raises as the constructor does, then unchanged."""
        packed = _Packed(d)
        self._ids.extend(packed.ids)
        self._text += d.text.encode("utf-8", _SURROGATES)
        self.chars += len(d.text)
        if self.logprobs is not None and packed.logprobs is not None:
            self.logprobs.extend(packed.logprobs)
        self._count(d)

    def _count(self, d: TokenDelta) -> None:
        """The newer delta's counts; its cached tokens only when it says (as ``Generation``)."""
        self.prompt_tokens = d.prompt_tokens
        self.completion_tokens = d.completion_tokens
        self.cached_tokens = d.cached_tokens or self.cached_tokens

    @property
    def nbytes(self) -> int:
        size = _PENDING + self._ids.itemsize * len(self._ids) + len(self._text)
        return size + (self.logprobs.nbytes if self.logprobs is not None else 0)

    def delta(self) -> TokenDelta:
        """The one delta a reader gets for all those joined."""
        return TokenDelta(
            self.request_id,
            self._ids.tolist(),
            self._text.decode("utf-8", _SURROGATES),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            logprobs=self.logprobs.unpack() if self.logprobs is not None else None,
            prompt_logprobs=self.prompt_logprobs,
            cached_tokens=self.cached_tokens,
            text_start=self.text_start,
        )


class _Packed:
    """One delta's token ids and logprobs in arrays (built whole first: a value that does not
    fit raises before anything is joined)."""

    def __init__(self, d: TokenDelta) -> None:
        self.ids = array("q", d.token_ids)
        self.logprobs = None if d.logprobs is None else _PackedLogprobs(d.logprobs)


class _PackedLogprobs:
    """``TokenLogprobs`` in flat arrays; alternatives of token i: ``top_*[ends[i-1]:ends[i]]``.
    A missing rank is NaN (ranks are whole numbers, exact in a double)."""

    def __init__(self, lps: Iterable[TokenLogprobs]) -> None:
        self.ids, self.values, self.ranks = array("q"), array("d"), array("d")
        self.ends, self.top_ids, self.top_values = array("q"), array("q"), array("d")
        for lp in lps:
            self.ids.append(lp.token_id)
            self.values.append(lp.logprob)
            self.ranks.append(math.nan if lp.rank is None else lp.rank)
            for token, value in lp.top:
                self.top_ids.append(token)
                self.top_values.append(value)
            self.ends.append(len(self.top_ids))

    def extend(self, other: _PackedLogprobs) -> None:
        base = len(self.top_ids)
        self.ends.extend(base + end for end in other.ends)
        for mine, theirs in self._arrays(other):
            mine.extend(theirs)

    def _arrays(self, other: _PackedLogprobs) -> list[tuple[array, array]]:  # type: ignore[type-arg]
        names = ("ids", "values", "ranks", "top_ids", "top_values")
        return [(getattr(self, n), getattr(other, n)) for n in names]

    @property
    def nbytes(self) -> int:
        arrays = (self.ids, self.values, self.ranks, self.ends, self.top_ids, self.top_values)
        return sum(_OBJECT + a.itemsize * len(a) for a in arrays)

    def unpack(self) -> list[TokenLogprobs]:
        out, start = [], 0
        top_ids, top_values = self.top_ids.tolist(), self.top_values.tolist()
        for token, value, rank, end in zip(
            self.ids, self.values, self.ranks, self.ends, strict=True
        ):
            top = tuple(zip(top_ids[start:end], top_values[start:end], strict=True))
            out.append(TokenLogprobs(token, value, top, None if math.isnan(rank) else int(rank)))
            start = end
        return out
