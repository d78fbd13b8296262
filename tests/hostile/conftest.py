"""One real stack (two tenants, one prefill and one decode worker) for the whole hostile suite.

``hs`` hands each test the running stack with its processes marked as healthy.  A test that broke
the stack (a process exited, or it was restarted) fails on its own; before the next test the
supervisor is given time to heal it, and the stack is started afresh only if it does not heal, so
one crash does not fail every later case.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.adapter_files import AdapterFiles
from tests.hostile.cases import CaseContext
from tests.hostile.harness import HostileStack


class StackHolder:
    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp = tmp_path_factory
        self.current: HostileStack | None = None

    def ready(self) -> HostileStack:
        hs = self.current
        if hs is not None and hs.broken_processes() and not hs.recover():
            hs.stop()
            hs = None
        if hs is None:
            hs = self.current = HostileStack.start(self.tmp.mktemp("hostile"))
        hs.mark()
        return hs

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()


@pytest.fixture(scope="package")
def holder(tmp_path_factory) -> Iterator[StackHolder]:
    h = StackHolder(tmp_path_factory)
    yield h
    h.stop()


@pytest.fixture
def hs(holder) -> HostileStack:
    return holder.ready()


@pytest.fixture(scope="package")
def template() -> AdapterFiles:
    return AdapterFiles.template()


@pytest.fixture
def ctx(hs, template) -> CaseContext:
    return CaseContext(hs.model_id, hs.adapters_root, template)
