"""What the scheduler keeps to migrate a request whose worker died mid-stream: its tokens so far.

Workers report each step's token ids on ``loraplex.sched.usage`` (``RequestProgress.token_ids``)
*before* the matching ``TokenDelta``; one connection's messages keep their order, so the scheduler
knows every token the gateway can have.  A migrated request is placed again with those tokens
(``PrefillAssign.generated``): the new worker prefills prompt + tokens, replays the tokens to the
gateway (which drops those it has, by index) and decodes on.  Core NATS can lose a report, which
leaves a gap; now and then (from ``TOKEN_SNAPSHOT_EVERY`` tokens on) a report also carries all
the ids so far (``RequestProgress.all_token_ids``), which makes the log whole again.  Pure Python
bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLog:
    """A request's completion tokens as its workers reported them, placed by index (a report's
    first token is token ``completion_tokens - len(token_ids)``).  A report that skips tokens, or
    counts tokens without their ids (a worker from before migration), breaks the log: such a
    request cannot be resumed."""

    ids: list[int] = field(default_factory=list)
    broken: bool = False

    def record(self, token_ids: list[int], new_tokens: int, completion_tokens: int) -> None:
        if len(token_ids) != new_tokens:
            self.broken = True
            return
        start = completion_tokens - len(token_ids)
        if start < 0 or start > len(self.ids):
            self.broken = True  # a gap: some report never arrived
            return
        # A report overlapping what is known (a replay) rewrites it in place, never truncates.
        self.ids[start : start + len(token_ids)] = token_ids

    def snapshot(self, token_ids: list[int], completion_tokens: int) -> None:
        """All the tokens so far (a worker sends them now and then): the log is whole again,
        whatever reports were lost before."""
        if len(token_ids) == completion_tokens:
            self.ids = list(token_ids)
            self.broken = False

    def adopt(self, received: list[int] | None, tail: TokenTail) -> None:
        """Seed the log of a request a new leader adopts: the ids its gateway received (from the
        first token on), then what its worker reported since the takeover (``tail``).  With a hole
        between the two the log stays broken until the worker's next snapshot."""
        self.ids = list(received or [])
        self.broken = False
        if tail.start is None:
            return
        if tail.broken or tail.start > len(self.ids):
            self.broken = True
            return
        self.ids[tail.start : tail.start + len(tail.ids)] = tail.ids

    def resumable(self, max_tokens: int, reported: int = 0) -> bool:
        """Whether the request can continue from these tokens on another worker: the log is
        whole, holds at least the ``reported`` count (a request adopted by a new scheduler leader
        arrives with a count and no ids) and leaves tokens to generate."""
        return not self.broken and reported <= len(self.ids) < max_tokens


@dataclass
class TokenTail:
    """The token reports a new leader hears for a request it has not adopted yet: contiguous ids
    from completion token ``start`` on (None until the first report)."""

    start: int | None = None
    ids: list[int] = field(default_factory=list)
    broken: bool = False

    @property
    def end(self) -> int:
        return (self.start or 0) + len(self.ids)

    def record(self, token_ids: list[int], new_tokens: int, completion_tokens: int) -> None:
        first = completion_tokens - len(token_ids)
        if len(token_ids) != new_tokens or first < 0:
            self.broken = True
        elif self.start is None:
            self.start, self.ids = first, list(token_ids)
        elif self.start <= first <= self.end:
            at = first - self.start
            self.ids[at : at + len(token_ids)] = token_ids
        else:
            self.broken = True

    def snapshot(self, token_ids: list[int], completion_tokens: int) -> None:
        if len(token_ids) == completion_tokens:
            self.start, self.ids, self.broken = 0, list(token_ids), False
