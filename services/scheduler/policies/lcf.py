"""Least Counter First: VTC without the counter lift (the paper's ablation baseline).

Counters, costs, weights, tie-breaking and length prediction are exactly VTC's
(:class:`~loraplex.scheduler.policies.vtc.VTCPolicy`); the only difference is that a tenant whose
queue was empty keeps its old (low) counter when it returns.  Idle time is therefore banked as
credit: a tenant that was away while others were served is, on return, served *exclusively* until
its counter catches up, starving everyone else for that long.  Not fair; do not deploy.
"""

from __future__ import annotations

from typing import ClassVar

from .vtc import VTCPolicy


class LCFPolicy(VTCPolicy):
    """VTC with ``lift = False``."""

    name: ClassVar[str] = "lcf"
    lift: ClassVar[bool] = False
