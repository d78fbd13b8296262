"""docs/architecture.md stays true: every service flag and every NATS subject is documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from loraplex.protocol import Subjects

DOC = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [
        opt
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    ]


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from loraplex.adapter_store.__main__ import build_parser as store_parser
    from loraplex.gateway.__main__ import build_parser as gateway_parser
    from loraplex.scheduler.settings import build_parser as scheduler_parser
    from loraplex.tooling.up_flags import build_parser as up_parser
    from loraplex.worker.settings import build_parser as worker_parser

    return {
        "loraplex up": up_parser(argparse.ArgumentParser()),
        "gateway": gateway_parser(),
        "scheduler": scheduler_parser(),
        "worker": worker_parser("prefill"),
        "adapter-store": store_parser(),
    }


@pytest.mark.parametrize(
    "service", ["loraplex up", "gateway", "scheduler", "worker", "adapter-store"]
)
def test_every_flag_is_documented(service):
    missing = [f for f in _flags(_parsers()[service]) if f"`{f}" not in DOC]
    assert not missing, f"{service} flags missing from docs/architecture.md: {missing}"


def test_every_subject_is_documented():
    fixed = [v for k, v in vars(Subjects).items() if k.isupper()]
    templated = [
        Subjects.worker("<worker-id>"),
        Subjects.kv("<worker-id>"),
        Subjects.stream("<gateway-id>"),
    ]
    for subject in fixed + templated:
        assert f"`{subject}`" in DOC, subject
    # ... and the doc names no subject that does not exist.
    documented = set(
        re.findall(r"`(loraplex\.(?:sched|worker|kv|stream|adapters)\.[a-z.<>-]+)`", DOC)
    )
    assert documented <= set(fixed + templated), documented - set(fixed + templated)
