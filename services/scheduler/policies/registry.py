"""Build a fairness policy by name: ``make_policy("vtc", {"acme": 2.0}, predict_output=True)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import FairnessPolicy
from .fcfs import FCFSPolicy
from .lcf import LCFPolicy
from .rpm import RPMPolicy
from .vtc import VTCPolicy

POLICIES: dict[str, type[FairnessPolicy]] = {
    "vtc": VTCPolicy,
    "fcfs": FCFSPolicy,
    "lcf": LCFPolicy,
    "rpm": RPMPolicy,
}


def make_policy(
    name: str, weights: Mapping[str, float] | None = None, **options: Any
) -> FairnessPolicy:
    """A fresh policy.  ``options`` go to the class (``w_p``, ``w_q``; VTC/LCF: ``predict_output``,
    ``ema_alpha``, ``initial_prediction``; RPM: ``limit``, ``limits``, ``window_s``,
    ``work_conserving``).  Unknown names or options raise ``ValueError``/``TypeError``."""
    try:
        cls = POLICIES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
    return cls(weights, **options)
