"""The tenants file as it is now: tenants and keys change without a restart.

A platform adds a tenant, rotates a key (``api_keys``: the new one beside the old, then the old
one removed) or changes a weight by rewriting the file (a Kubernetes Secret mounted as a volume is
swapped in place).  Every service that reads it (gateway, adapter store, scheduler) polls it every
``LORAPLEX_TENANTS_RELOAD_S`` and, when its bytes changed, reads it again.  A file that does not
parse (a half-written edit, a typo) changes nothing: the last good tenants stay, one error line
says why, and the next change is tried again.  Removing a tenant refuses its new requests (401);
its running ones finish.  Open mode (no file) never changes.  Plain Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from loraplex import env, prom
from loraplex.tenants import Tenant, Tenants, TenantsConfigError, load_tenants
from loraplex.timeouts import cancel_requested

log = logging.getLogger(__name__)


class LiveTenants:
    """The current ``Tenants`` of a file; ``check()`` re-reads it when its bytes changed."""

    def __init__(self, path: str | Path | None, tenants: Tenants | None = None) -> None:
        self.path = Path(path) if path else None
        self.current = tenants if tenants is not None else load_tenants(self.path)
        self._digest = self._read_digest()
        self.listeners: list[Callable[[Tenants], None]] = []
        self.reloads = 0  # changes taken (logs, tests)
        self.refused = 0  # changes that did not parse

    @classmethod
    def fixed(cls, tenants: Tenants) -> LiveTenants:
        """Tenants that never change (tests, a caller without a file)."""
        return cls(None, tenants)

    @property
    def open_mode(self) -> bool:
        return self.current.open_mode

    def authenticate(self, authorization: str | None) -> Tenant:
        return self.current.authenticate(authorization)

    def metric_families(self) -> list[prom.Family]:
        """``loraplex_tenants_file_changes{result}``: changes taken and refused (alert on
        refused: the file in use is not the one written)."""
        values = {("taken",): float(self.reloads), ("refused",): float(self.refused)}
        doc = "changes of the tenants file: taken, or refused (not valid: the last good one kept)"
        return [prom.counter("loraplex_tenants_file_changes", doc, values, ["result"])]

    def on_change(self, listener: Callable[[Tenants], None]) -> None:
        """``listener(new)`` after each change taken (the scheduler's weights)."""
        self.listeners.append(listener)

    def _read_digest(self) -> bytes | None:
        if self.path is None:
            return None
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except OSError:
            return None  # gone for a moment (replaced in place): the next poll sees it

    def check(self) -> bool:
        """Re-read the file if its bytes changed; True when new tenants were taken."""
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest  # a bad version is reported once, not at every poll
        try:
            tenants = load_tenants(self.path)
        except TenantsConfigError as e:  # its message names the entry, never a key
            self.refused += 1
            log.error("tenants file changed but is not valid, keeping the last good one: %s", e)
            return False
        before = set(self.current.names)
        self.current = tenants
        self.reloads += 1
        added, removed = set(tenants.names) - before, before - set(tenants.names)
        log.info(
            "tenants file re-read: %d tenants (added: %s; removed: %s)",
            len(tenants.tenants),
            ", ".join(sorted(added)) or "none",
            ", ".join(sorted(removed)) or "none",
        )
        for listener in self.listeners:
            listener(tenants)
        return True

    @contextlib.asynccontextmanager
    async def watching(self, interval_s: float | None = None) -> AsyncIterator[LiveTenants]:
        """Poll the file every ``interval_s`` (``LORAPLEX_TENANTS_RELOAD_S``; 0: never) while
        the context is open."""
        interval = env.TENANTS_RELOAD_S.get() if interval_s is None else interval_s
        if self.path is None or interval <= 0:
            yield self
            return

        async def poll() -> None:
            while not cancel_requested():
                await asyncio.sleep(interval)
                try:
                    self.check()
                except Exception:  # a listener's bug must not end the watch
                    log.exception("tenants reload failed")

        task = asyncio.create_task(poll(), name="tenants-watch")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
