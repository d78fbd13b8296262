"""deploy/helm/loraplex, checked without a cluster or a Helm binary.

The chart is rendered (tests/deploy/helm_render.py) for the default values and for each optional
path (KEDA, HPA, external NATS/Redis, an existing tenants Secret, ...); every manifest is validated
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), every
container command is parsed by its service's own argparse parser, and every probe and port is
checked against the flags that open them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.gotemplate import TemplateError
from tests.deploy.helm_render import CHART, by_kind, chart_meta, render
from tests.deploy.service_flags import parse_command

ROOT = Path(__file__).resolve().parents[2]
TENANTS = {"tenants": {"tenants": [{"name": "team-a", "api_key": "sk-test-a", "weight": 2}]}}
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())  # Chart.yaml kubeVersion, newest
WORKLOADS = ("gateway", "scheduler", "adapter-store", "prefill", "decode")
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "keda": {"autoscaling": {"enabled": True, "backend": "keda"}},
    "hpa": {"autoscaling": {"enabled": True, "backend": "hpa"}},
    "external-infra": {
        "nats": {"enabled": False},
        "externalNats": {"url": "nats://n1:4222,nats://n2:4222"},
        "redis": {"enabled": False},
        "externalRedis": {"existingSecret": "redis-url"},
    },
    "existing-tenants-secret": {"tenants": {"existingSecret": "my-tenants", "tenants": []}},
    "no-extras": {
        "podDisruptionBudget": {"enabled": False},
        "metrics": {"annotations": False},
        "redis": {"sentinel": {"enabled": False}},
        "workers": {"adapterDiskCache": {"enabled": False}},
    },
    "everything-set": {
        "imagePullSecrets": [{"name": "regcred"}],
        "model": {"id": "llama-3-8b", "subPath": "Meta-Llama-3-8B"},
        "decode": {"nodeSelector": {"gpu": "h200"}, "extraArgs": ["--enforce-eager"]},
        "gateway": {"extraArgs": ["--request-timeout", "120"]},
    },
    "prometheus-operator": {  # tests/deploy/test_helm_monitoring.py checks these resources
        "metrics": {
            "podMonitor": {"enabled": True, "interval": "30s", "labels": {"release": "kps"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
        },
    },
}


def _render(name: str, release: str = "prod") -> list[dict[str, Any]]:
    from tests.deploy.helm_render import deep_merge

    return render(deep_merge(TENANTS, VARIANTS[name]), release=release)


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return _render("defaults")


def _containers(deploy: dict[str, Any]) -> list[dict[str, Any]]:
    return deploy["spec"]["template"]["spec"]["containers"]


def _deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (d,) = [
        d for d in docs
        if d["kind"] == "Deployment"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]  # fmt: skip
    return d


def _image_env() -> dict[str, str]:
    """The Dockerfile's ENV settings: what every container starts with."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(kv.split("=", 1) for kv in line[4:].split() if "=" in kv)
    return env


def _parse(container: dict[str, Any]):
    """The container's command as its service parses it, with the image's and container's env."""
    cmd = container["command"]
    assert cmd[:2] == ["python", "-m"], cmd
    env = _image_env()
    env.update({e["name"]: e.get("value", "from-secret") for e in container.get("env", [])})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return parse_command(cmd[2], container["args"])
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_manifest_is_valid_kubernetes(variant: str) -> None:
    docs = _render(variant)
    assert docs
    for doc in docs:
        if doc["apiVersion"] in ("keda.sh/v1alpha1", "monitoring.coreos.com/v1"):
            continue  # CRDs: test_keda_scaled_objects and test_helm_monitoring.py check them
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        assert len(doc["metadata"]["name"]) <= 63


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_command_parses_with_its_service(variant: str) -> None:
    for d in by_kind(_render(variant), "Deployment").values():
        for c in _containers(d):
            _parse(c)


def test_the_workloads(docs) -> None:
    kinds = {(d["kind"], d["metadata"]["labels"].get("app.kubernetes.io/component")) for d in docs}
    for w in WORKLOADS:
        assert ("Deployment", w) in kinds and ("PodDisruptionBudget", w) in kinds
    modules = {_deployment(docs, w)["spec"]["template"]["spec"]["containers"][0]["command"][2]
               for w in WORKLOADS}  # fmt: skip
    assert modules == {"loraplex.gateway", "loraplex.scheduler", "loraplex.adapter_store",
                       "loraplex.prefill", "loraplex.decode"}  # fmt: skip


def test_scheduler_runs_active_standby_replicas(docs) -> None:
    sched = _deployment(docs, "scheduler")
    assert sched["spec"]["replicas"] >= 2
    args = _parse(_containers(sched)[0])
    assert args.redis_url, "the leader lease lives in Redis"


@pytest.mark.parametrize("component", WORKLOADS)
def test_probes_and_ports_match_the_flags(docs, component: str) -> None:
    """Each probe hits the port the service really opens, on an address the kubelet reaches,
    /health for liveness and /ready for readiness; the containerPort is declared."""
    c = _containers(_deployment(docs, component))[0]
    args = _parse(c)
    if component in ("gateway", "adapter-store"):
        port, host = args.port, args.host
    else:  # scheduler and workers: their /health, /ready, /metrics listener
        port, host = args.metrics_port, args.metrics_host
    assert port and host == "0.0.0.0"
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port}
    assert port in {p["containerPort"] for p in c["ports"]}
    if component in ("prefill", "decode"):
        startup = c["startupProbe"]
        assert startup["httpGet"] == {"path": "/health", "port": port}
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model load + warm-up"
    if component == "gateway":
        assert args.metrics_port in {p["containerPort"] for p in c["ports"]}
        assert args.metrics_host == "0.0.0.0"


def test_gateway_service_does_not_expose_metrics(docs) -> None:
    """/metrics names tenants: scraped from the pods, never put behind the client Service."""
    gw = _parse(_containers(_deployment(docs, "gateway"))[0])
    svc = next(s for s in by_kind(docs, "Service").values()
               if s["spec"]["selector"]["app.kubernetes.io/component"] == "gateway")  # fmt: skip
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
    c = _containers(_deployment(docs, "gateway"))[0]
    http = next(p["containerPort"] for p in c["ports"] if p["name"] == "http")
    assert http == gw.port != gw.metrics_port


@pytest.mark.parametrize("pool", ["prefill", "decode"])
def test_workers_get_one_gpu_each_and_the_model_read_only(docs, pool: str) -> None:
    d = _deployment(docs, pool)
    c = _containers(d)[0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = _parse(c)
    assert args.role == pool and args.device == "cuda"  # the pod's one GPU is its cuda:0
    assert 0 < args.gpu_memory_utilization <= 1
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[args.model]["readOnly"] is True
    writable = [p for p, m in mounts.items() if not m.get("readOnly")]
    assert any(args.gpu_lease_dir.startswith(p + "/") for p in writable), args.gpu_lease_dir
    model_volume = next(v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == "model")
    assert model_volume["persistentVolumeClaim"]["readOnly"] is True


@pytest.mark.parametrize("pool", ["prefill", "decode"])
def test_workers_keep_adapter_copies_on_a_volume_that_outlives_a_container(pool: str) -> None:
    """The copies must survive the container restart that empties the worker's memory: an
    emptyDir, writable under the read-only root; none when turned off."""
    for variant, enabled in (("defaults", True), ("no-extras", False)):
        d = _deployment(_render(variant), pool)
        c = _containers(d)[0]
        args = _parse(c)
        if not enabled:
            assert args.adapter_disk_cache == ""
            continue
        assert args.adapter_disk_cache and args.adapter_disk_cache_mb == 4096
        (mount,) = [
            m for m in c["volumeMounts"] if args.adapter_disk_cache.startswith(m["mountPath"] + "/")
        ]
        assert not mount.get("readOnly")
        (volume,) = [
            v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
        ]
        assert volume["emptyDir"]["sizeLimit"] == "5Gi" and "medium" not in volume["emptyDir"]


def test_every_pod_runs_as_the_images_user_with_a_read_only_root(docs) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.findall(r"^USER (\d+)", dockerfile, re.M)[-1])
    for w in WORKLOADS:
        spec = _deployment(docs, w)["spec"]["template"]["spec"]
        assert (
            spec["securityContext"]["runAsUser"] == uid and spec["securityContext"]["runAsNonRoot"]
        )
        c = spec["containers"][0]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
        assert {"/tmp", "/home/loraplex"} <= writable  # Triton's cache, spooled uploads


def test_tenants_come_from_a_secret(docs) -> None:
    (secret,) = by_kind(docs, "Secret").values()
    tenants = yaml.safe_load(secret["stringData"]["tenants.yaml"])
    assert tenants == {"tenants": [{"name": "team-a", "api_key": "sk-test-a", "weight": 2}]}
    for w in ("gateway", "scheduler", "adapter-store"):
        d = _deployment(docs, w)
        c = _containers(d)[0]
        path = Path(_parse(c).tenants)
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent))
        volume = next(
            v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
        )
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert volume["secret"]["items"] == [{"key": "tenants.yaml", "path": path.name}]
        # a directory mount, not a subPath one: the kubelet swaps an updated Secret in, and the
        # services re-read the file (tenants_watch.py), so tenants change without a restart
        assert "subPath" not in mount
    existing = _render("existing-tenants-secret")
    assert not by_kind(existing, "Secret")
    gw = _deployment(existing, "gateway")["spec"]["template"]["spec"]["volumes"]
    assert {"my-tenants"} == {v["secret"]["secretName"] for v in gw if "secret" in v}


def test_no_tenants_is_refused_with_a_message() -> None:
    with pytest.raises(TemplateError, match="set tenants.existingSecret"):
        render({})


def test_external_nats_without_a_url_is_refused() -> None:
    with pytest.raises(TemplateError, match="set externalNats.url"):
        render({**TENANTS, "nats": {"enabled": False}})


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("release", ["prod", "nats-and-redis"])
def test_infrastructure_urls_name_the_upstream_charts_services(release: str) -> None:
    """<release>-nats / <release>-redis, or the release name when it already holds the chart's
    name (the upstream charts' fullname rule); Redis through Sentinel."""
    docs = render(TENANTS, release=release)
    nats = release if "nats" in release else f"{release}-nats"
    redis = release if "redis" in release else f"{release}-redis"
    for w in WORKLOADS:
        env = _env(_containers(_deployment(docs, w))[0])
        assert env["LORAPLEX_NATS_URL"] == f"nats://{nats}:4222"
        assert env["LORAPLEX_REDIS_URL"] == f"redis+sentinel://{redis}:26379/mymaster/0"


def test_external_infrastructure() -> None:
    docs = _render("external-infra")
    env = _env(_containers(_deployment(docs, "decode"))[0])
    assert env["LORAPLEX_NATS_URL"] == "nats://n1:4222,nats://n2:4222"
    assert env["LORAPLEX_REDIS_URL"] == {"secretKeyRef": {"name": "redis-url", "key": "url"}}


def test_chart_dependencies_and_their_values() -> None:
    meta = chart_meta()
    deps = {d["name"]: d for d in meta["dependencies"]}
    assert deps["nats"]["repository"] == "https://nats-io.github.io/k8s/helm/charts"
    assert deps["redis"]["repository"] == "https://charts.bitnami.com/bitnami"
    assert (
        deps["nats"]["condition"] == "nats.enabled"
        and deps["redis"]["condition"] == "redis.enabled"
    )
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    from loraplex.tooling.servers import NATS_MAX_PAYLOAD

    assert values["nats"]["config"]["jetstream"]["enabled"] is True
    assert values["nats"]["config"]["merge"]["max_payload"] >= NATS_MAX_PAYLOAD
    assert values["nats"]["config"]["cluster"]["replicas"] >= 3
    assert values["redis"]["sentinel"]["enabled"] is True


def test_pod_disruption_budgets_select_their_workloads(docs) -> None:
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
                   for d in by_kind(docs, "Deployment").values()}  # fmt: skip
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        component = pdb["metadata"]["labels"]["app.kubernetes.io/component"]
        labels = deployments[component]["spec"]["template"]["metadata"]["labels"]
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        others = [c for c, d in deployments.items() if c != component
                  and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]  # fmt: skip
        assert not others, f"{pdb['metadata']['name']} also selects {others}"
        assert pdb["spec"]["maxUnavailable"] == 1


def _queue_metric() -> str:
    return "loraplex_scheduler_queue_depth"


def test_keda_scaled_objects() -> None:
    docs = _render("keda")
    scaled = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert len(scaled) == 2
    for name, so in scaled.items():
        pool = so["metadata"]["labels"]["app.kubernetes.io/component"]
        target = _deployment(docs, pool)
        assert so["spec"]["scaleTargetRef"] == {"name": target["metadata"]["name"]} and name
        assert "replicas" not in target["spec"], "the autoscaler owns replicas"
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        assert trigger["metadata"]["query"] == f'max({_queue_metric()}{{pool="{pool}"}})'
        assert float(trigger["metadata"]["threshold"]) > 0
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]


def test_hpa_on_the_external_queue_metric() -> None:
    docs = _render("hpa")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert len(hpas) == 2
    for hpa in hpas.values():
        pool = hpa["metadata"]["labels"]["app.kubernetes.io/component"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["external"]["metric"]["name"] == _queue_metric()
        assert metric["external"]["metric"]["selector"]["matchLabels"] == {"pool": pool}
        assert hpa["spec"]["scaleTargetRef"]["name"] == _deployment(docs, pool)["metadata"]["name"]


def test_the_autoscaling_metric_is_one_the_scheduler_exports() -> None:
    source = (ROOT / "services" / "scheduler" / "metrics.py").read_text()
    assert f'"{_queue_metric()}"' in source
    assert re.search(r'POOLS = \("prefill", "decode"', source)


def test_unknown_autoscaling_backend_is_refused() -> None:
    with pytest.raises(TemplateError, match="keda or hpa"):
        render({**TENANTS, "autoscaling": {"enabled": True, "backend": "custom"}})
