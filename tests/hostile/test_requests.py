"""Hostile generation, tokenization and unicode requests: each gets tokens or a 4xx with an OpenAI
error body, never a 5xx or a dropped connection, and the other tenant is served afterwards by the
same processes (none exited or restarted)."""

from __future__ import annotations

import pytest

from tests.hostile.case_table import SAMPLING_CASES, UNICODE_CASES
from tests.hostile.cases import Case, run_case


@pytest.mark.parametrize("case", SAMPLING_CASES + UNICODE_CASES, ids=lambda c: c.id)
def test_hostile_request(hs, ctx, case: Case):
    result = run_case(hs, case, ctx)
    if result.problems:
        pytest.fail("\n".join(result.problems), pytrace=False)
