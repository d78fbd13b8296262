"""The chart's prometheus-operator resources (metrics.podMonitor, metrics.prometheusRule): off by
default; on, a PodMonitor that scrapes every loraplex pod's `metrics` port and a PrometheusRule
holding exactly the groups of the chart's files/alerts.yaml (deploy/prometheus/alerts.yaml links
to it), so the rules Prometheus loads by `rule_files:` and by the operator never drift apart."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml

from tests.deploy.helm_render import CHART, by_kind, chart_files, deep_merge, files_get, render
from tests.deploy.test_helm_chart import ROOT, TENANTS, VARIANTS, _deployment
from tests.deploy.test_helm_values_schema import _schema_errors

RULES = CHART / "files" / "alerts.yaml"
RULES_LINK = ROOT / "deploy" / "prometheus" / "alerts.yaml"
MONITORING = "monitoring.coreos.com/v1"

# The fields the prometheus-operator CRDs define where the chart writes (monitoring.coreos.com/v1).
POD_MONITOR_SPEC = {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel",
                    "podTargetLabels", "sampleLimit", "targetLimit", "attachMetadata"}  # fmt: skip
ENDPOINT = {"port", "portNumber", "path", "scheme", "params", "interval", "scrapeTimeout",
            "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings", "tlsConfig",
            "basicAuth", "authorization", "followRedirects", "enableHttp2"}  # fmt: skip
RELABEL = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
RULE_GROUP = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset",
              "labels"}  # fmt: skip
RULE = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(
    r"(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)"
)


def _monitoring(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs if d["apiVersion"] == MONITORING}


@pytest.fixture(scope="module")
def on() -> list[dict[str, Any]]:
    return render(deep_merge(TENANTS, VARIANTS["prometheus-operator"]))


def _metrics_pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """component -> pod template, of each Deployment whose container exposes a `metrics` port."""
    out = {}
    for d in by_kind(docs, "Deployment").values():
        pod = d["spec"]["template"]
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        if "metrics" in ports:
            out[d["metadata"]["labels"]["app.kubernetes.io/component"]] = pod
    return out


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "prometheus-operator"])
def test_off_by_default(variant: str) -> None:
    assert _monitoring(render(deep_merge(TENANTS, VARIANTS[variant]))) == {}


def test_each_can_be_turned_on_alone() -> None:
    for which, kind in (("podMonitor", "PodMonitor"), ("prometheusRule", "PrometheusRule")):
        docs = render(deep_merge(TENANTS, {"metrics": {which: {"enabled": True}}}))
        (doc,) = _monitoring(docs).values()
        assert doc["kind"] == kind
        if kind == "PodMonitor":  # the default interval
            assert doc["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"


def test_the_pod_monitor_scrapes_every_metrics_port_of_this_release(on) -> None:
    pm = _monitoring(on)["PodMonitor"]
    assert pm["metadata"]["name"] == "prod-loraplex"
    assert pm["metadata"]["labels"]["release"] == "kps"  # for the podMonitorSelector
    assert pm["metadata"]["labels"]["app.kubernetes.io/instance"] == "prod"
    assert set(pm["spec"]) <= POD_MONITOR_SPEC
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "loraplex", "app.kubernetes.io/instance": "prod"}
    assert "namespaceSelector" not in pm["spec"]  # the release's own namespace
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= ENDPOINT
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s" and DURATION.fullmatch(endpoint["interval"])
    # every pod that serves /metrics is selected and names the port so; the adapter-store
    # serves none (no metrics port), so the endpoint finds no target in its pods
    pods = _metrics_pods(on)
    assert set(pods) == {"gateway", "scheduler", "prefill", "decode"}
    for component, pod in pods.items():
        assert selector.items() <= pod["metadata"]["labels"].items(), component
    (store,) = _deployment(on, "adapter-store")["spec"]["template"]["spec"]["containers"]
    assert "metrics" not in {p["name"] for p in store["ports"]}


def test_the_pod_monitor_labels_targets_with_their_component(on) -> None:
    """Kubernetes SD exposes the pod label app.kubernetes.io/component as
    __meta_kubernetes_pod_label_app_kubernetes_io_component (non-alphanumerics to _)."""
    (endpoint,) = _monitoring(on)["PodMonitor"]["spec"]["podMetricsEndpoints"]
    (relabel,) = endpoint["relabelings"]
    assert set(relabel) <= RELABEL
    (source,) = relabel["sourceLabels"]
    assert relabel["targetLabel"] == "component" and relabel.get("action", "replace") == "replace"
    for pod in _metrics_pods(on).values():
        meta = {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v
                for k, v in pod["metadata"]["labels"].items()}  # fmt: skip
        assert meta[source] == pod["metadata"]["labels"]["app.kubernetes.io/component"]


def test_the_prometheus_rule_holds_the_rules_file_groups(on) -> None:
    rule = _monitoring(on)["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kps"  # for the ruleSelector
    assert list(rule["spec"]) == ["groups"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    for group in rule["spec"]["groups"]:
        assert set(group) <= RULE_GROUP
        for r in group["rules"]:
            assert set(r) <= RULE and "alert" in r
            assert DURATION.fullmatch(r.get("for", "0"))
    # included verbatim, not templated: Prometheus gets {{ $labels.pool }} and expands it itself
    summaries = [r["annotations"]["summary"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert any("{{ $labels.pool }}" in s for s in summaries)


def test_deploy_prometheus_alerts_is_a_relative_link_to_the_charts_rules() -> None:
    """`rule_files:` users and tests/deploy/alerts_test.yaml read the same file as the chart."""
    assert RULES_LINK.is_symlink() and not os.path.isabs(os.readlink(RULES_LINK))
    assert RULES_LINK.resolve() == RULES.resolve() and RULES.is_file() and not RULES.is_symlink()


def test_files_get_is_helms() -> None:
    """Helm's .Files: the chart's other files by their path from the chart root; the chart's own
    parts (Chart.yaml, values, templates/) are not in it; a missing file reads as ""."""
    files = chart_files()
    assert files_get(files, "files/alerts.yaml") == RULES.read_text()
    for missing in ("values.yaml", "Chart.yaml", "templates/monitoring.yaml", "nope.yaml",
                    "./files/alerts.yaml"):  # fmt: skip
        assert files_get(files, missing) == "", missing


@pytest.mark.parametrize(
    "bad",
    [
        {"podMonitor": {"enabled": "yes"}},
        {"podMonitor": {"interval": 15}},
        {"podMonitor": {"interval": "15 seconds"}},
        {"podMonitor": {"labels": ["release=kps"]}},
        {"podMonitor": {"labels": {"release": 1}}},
        {"prometheusRule": {"enabled": 1}},
        {"prometheusRule": {"labels": "release=kps"}},
        {"annotations": "true"},
    ],
)
def test_bad_monitoring_values_are_refused_by_the_schema(bad: dict[str, Any]) -> None:
    assert _schema_errors({"metrics": bad}), bad
