"""A bounded fuzz run of the gateway (about 750 derandomized cases, see fuzz.py): no 5xx, no dropped
connection, every error an OpenAI error body, every stream finished; the stack is intact after."""

from __future__ import annotations

import pytest

from tests.hostile.fuzz import run_fuzz
from tests.hostile.harness import ALPHA, BETA, HostileStack, StackBroken


def test_fuzz_gateway_and_adapter_routes(hs: HostileStack, template):
    log = run_fuzz(hs, template)
    assert log.tried >= 500, f"only {log.tried} cases ran"
    problems = [f"{len(log.failures)} of {log.tried} cases failed (statuses {log.statuses})"]
    problems += log.failures[:15]
    try:
        hs.assert_healthy(ALPHA)
        hs.assert_healthy(BETA)
    except StackBroken as e:
        problems.append(f"the stack broke: {e}")
    if len(problems) > 1:
        pytest.fail("\n".join(problems), pytrace=False)
