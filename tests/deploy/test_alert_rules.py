"""deploy/prometheus/alerts.yaml: valid for Prometheus (``promtool check rules``), firing as meant
on made-up series (``promtool test rules`` on alerts_test.yaml), and naming only metrics the
services export (a renamed metric would leave an alert that can never fire)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
TESTS = Path(__file__).with_name("alerts_test.yaml")


def promtool(*args: str, cwd: Path = ROOT) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: apt-get install prometheus (install-system-deps.sh)"
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid_and_fire_as_meant() -> None:
    assert "SUCCESS" in promtool("check", "rules", str(RULES))
    assert "SUCCESS" in promtool("test", "rules", TESTS.name, cwd=TESTS.parent)


def test_every_metric_named_is_exported() -> None:
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    named = {m for e in exprs for m in re.findall(r"loraplex_[a-z_]+", e)}
    sources = "\n".join(
        p.read_text() for d in ("services", "shared") for p in (ROOT / d).rglob("*.py")
    )
    for metric in named:
        base = metric.removesuffix("_total")  # prometheus_client adds it to counters
        assert f'"{base}"' in sources, f"{metric} is not exported by any service"
    assert len(named) >= 6
