"""Build a fairness policy by name: ``make_policy("vtc", {"acme": 2.0}, predict_output=True)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import FairnessPolicy
from .fcfs import FCFSPolicy
from .lcf import LCFPolicy
from .linear import LinearFCFSPolicy, LinearLCFPolicy, LinearVTCPolicy
from .rpm import RPMPolicy
from .vtc import VTCPolicy

POLICIES: dict[str, type[FairnessPolicy]] = {
    "vtc": VTCPolicy,
    "fcfs": FCFSPolicy,
    "lcf": LCFPolicy,
    "rpm": RPMPolicy,
}

# The linear-scan originals of the heap-based policies: same decisions, O(n) each.  For the
# equivalence tests and the scheduler bench only, so not ``--fairness`` choices.  RPM has no heap
# twin (which tenants are eligible moves with the clock), so it is its own reference.
REFERENCE_POLICIES: dict[str, type[FairnessPolicy]] = {
    "vtc": LinearVTCPolicy,
    "fcfs": LinearFCFSPolicy,
    "lcf": LinearLCFPolicy,
    "rpm": RPMPolicy,
}


def make_policy(
    name: str, weights: Mapping[str, float] | None = None, **options: Any
) -> FairnessPolicy:
    """A fresh policy.  ``options`` go to the class (``w_p``, ``w_q``; VTC/LCF: ``predict_output``,
    ``ema_alpha``, ``initial_prediction``; RPM: ``limit``, ``limits``, ``window_s``,
    ``work_conserving``).  Unknown names or options raise ``ValueError``/``TypeError``."""
    return _make(POLICIES, name, weights, options)


def make_reference_policy(
    name: str, weights: Mapping[str, float] | None = None, **options: Any
) -> FairnessPolicy:
    """``make_policy``'s linear-scan twin (``linear.py``): the same decisions, O(n) each."""
    return _make(REFERENCE_POLICIES, name, weights, options)


def _make(
    table: Mapping[str, type[FairnessPolicy]],
    name: str,
    weights: Mapping[str, float] | None,
    options: Mapping[str, Any],
) -> FairnessPolicy:
    try:
        cls = table[name.lower()]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(table)}") from None
    return cls(weights, **options)
