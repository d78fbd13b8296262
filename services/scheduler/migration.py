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

from loraplex.protocol import RequestProgress


@dataclass
class TokenLog:
    """A request's completion tokens as its workers reported them, placed by index (a report's
    first token is token ``completion_tokens - len(token_ids)``).  A report that skips tokens, or
    counts tokens without their ids (a worker from before migration), breaks the log: such a
    request cannot be resumed.

    ``start`` is the index of ``ids[0]``: 0 for a request's own log.  A new leader's log of a
    request it has not adopted yet (``TokenLog.tail()``) starts at the first report it hears."""

    ids: list[int] = field(default_factory=list)
    broken: bool = False
    start: int | None = 0

    @classmethod
    def tail(cls) -> TokenLog:
        """A log that starts wherever its first report does (``start`` None until then)."""
        return cls(start=None)

    @property
    def end(self) -> int:
        """The index one past the last token known."""
        return (self.start or 0) + len(self.ids)

    def record(self, token_ids: list[int], new_tokens: int, completion_tokens: int) -> None:
        first = completion_tokens - len(token_ids)
        if len(token_ids) != new_tokens or first < 0:
            self.broken = True
            return
        if self.start is None:
            self.start = first
        at = first - self.start
        if not 0 <= at <= len(self.ids):
            self.broken = True  # a gap: some report never arrived
            return
        # A report overlapping what is known (a replay) rewrites it in place, never truncates.
        self.ids[at : at + len(token_ids)] = token_ids

    def snapshot(self, token_ids: list[int], completion_tokens: int) -> None:
        """All the tokens so far (a worker sends them now and then): the log is whole again,
        whatever reports were lost before."""
        if len(token_ids) == completion_tokens:
            self.start, self.ids, self.broken = 0, list(token_ids), False

    def hear(self, p: RequestProgress) -> None:
        """A worker's ``tokens`` / ``finished`` report: its ids, and the snapshot it may carry."""
        self.record(p.token_ids, p.new_tokens, p.completion_tokens)
        if p.all_token_ids is not None:
            self.snapshot(p.all_token_ids, p.completion_tokens)

    def adopt(self, received: list[int] | None, tail: TokenLog) -> None:
        """Seed the log of a request a new leader adopts: the ids its gateway received (from the
        first token on), then what its worker reported since the takeover (``tail``).  With a hole
        between the two the log stays broken until the worker's next snapshot."""
        self.start, self.ids, self.broken = 0, list(received or []), False
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
