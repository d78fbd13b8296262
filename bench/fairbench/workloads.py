"""Workload and policy choices: the paper's suites per mode, the policies compared, and the live
mode's tenants (one API key per workload client) and capacity-scaled workloads."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from common import REPO_ROOT

from loraplex.tooling.simulator import Workload, paper_workload

WORKLOADS = [
    "overload",
    "proportional",
    "on_off_less",
    "on_off_overload",
    "poisson_short_long",
    "dist_shift",
]
IMG_DIR = REPO_ROOT / "docs" / "img"

LIVE_WORKLOADS = ["overload", "proportional", "on_off_less"]
LIVE_POLICIES = ["vtc", "fcfs", "lcf", "rpm"]
PAPER_CAPACITY_RPS = 1.75  # 256/256 requests/s of the paper's server (and of ServerConfig())
CALIBRATION_TENANT = "calibration"
PROMPT_VOCAB = range(100, 400)  # token ids the synthetic prompts are drawn from


def policy_specs(rpm_limit: int) -> list[tuple[str, str, dict]]:
    """(label, registry name, options) of every policy compared."""
    return [
        ("VTC", "vtc", {}),
        ("VTC (predict)", "vtc", {"predict_output": True}),
        ("FCFS", "fcfs", {}),
        ("LCF", "lcf", {}),
        (f"RPM {rpm_limit}", "rpm", {"limit": rpm_limit}),
    ]


def tenant_name(workload: str, client: str) -> str:
    return f"{workload}-{client}"


def api_key(tenant: str) -> str:
    return f"sk-bench-fairness-{tenant}"


def write_tenants_file(path: Path, workloads: list[str]) -> None:
    """Fresh tenants per workload, so no workload inherits another's counters or windows."""
    names = [CALIBRATION_TENANT] + [
        tenant_name(w, c.name) for w in workloads for c in paper_workload(w).clients
    ]
    tenants = [{"name": n, "api_key": api_key(n), "weight": 1.0} for n in dict.fromkeys(names)]
    path.write_text(json.dumps({"tenants": tenants}, indent=1))


def live_workload(name: str, args: argparse.Namespace, capacity_rps: float) -> Workload:
    """The paper's suite, time- and length-scaled, arrival rates scaled to this server's capacity."""
    wl = paper_workload(name, args.time_scale, args.length_scale)
    rate = capacity_rps / PAPER_CAPACITY_RPS
    clients = tuple(replace(c, rpm=c.rpm * rate) for c in wl.clients)
    return replace(wl, clients=clients, duration_s=min(wl.duration_s, args.duration_s))
