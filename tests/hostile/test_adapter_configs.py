"""Hostile adapter uploads and registrations (bad config fields, non-finite or huge tensors,
pickles, unknown files): each is a 4xx naming what is wrong, before anything is stored, and the
other tenant is served afterwards by the same processes."""

from __future__ import annotations

import pytest

from tests.hostile.case_table import ADAPTER_CASES
from tests.hostile.cases import Case, run_case


@pytest.mark.parametrize("case", ADAPTER_CASES, ids=lambda c: c.id)
def test_hostile_adapter(hs, ctx, case: Case):
    result = run_case(hs, case, ctx)
    if result.problems:
        pytest.fail("\n".join(result.problems), pytrace=False)
