"""docker-compose.yml, the Dockerfile and the deploy files, checked without a Docker engine.

The compose file is parsed with PyYAML; every loraplex service's command is run with ``--help``
appended (so argparse checks each flag and value, then exits) and every flag it uses must appear
in that service's ``--help``: a flag renamed in the code fails here, not in a container.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loraplex.tenants import load_tenants
from loraplex.tooling.servers import NATS_MAX_PAYLOAD

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
LORAPLEX_SERVICES = ("adapter-store", "scheduler", "prefill", "decode", "gateway")
WORKERS = ("prefill", "decode")
NATS_URL = "nats://nats:4222"
REDIS_URL = "redis://redis:6379/0"
MODEL_MOUNT = "/models/model"
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def _expand(value: str) -> str:
    """Compose interpolation with the defaults only (the test must not depend on the shell)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _command(service: dict) -> list[str]:
    cmd = service["command"]
    assert isinstance(cmd, list), "use the list form of command (no shell parsing)"
    return [_expand(str(c)) for c in cmd]


def _module_and_args(service: dict) -> tuple[str, list[str]]:
    cmd = _command(service)
    assert cmd[:2] == ["python", "-m"], f"command must start with 'python -m': {cmd}"
    return cmd[2], cmd[3:]


def _flag(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _bind_mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (expanded source, read-only) for the service's bind mounts (both syntaxes)."""
    mounts: dict[str, tuple[str, bool]] = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type") == "bind":
                mounts[v["target"]] = (_expand(v["source"]), bool(v.get("read_only")))
        else:
            parts = _expand(v).split(":")
            if parts[0].startswith((".", "/")):
                mounts[parts[1]] = (parts[0], parts[2:] == ["ro"])
    return mounts


def _healthcheck(service: dict) -> list[str]:
    test = service.get("healthcheck", {}).get("test")
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), f"no health check: {service}"
    return test


def test_the_seven_services(services: dict) -> None:
    assert set(services) == {"nats", "redis", *LORAPLEX_SERVICES}


def test_nats_runs_jetstream_with_a_raised_max_payload(services: dict) -> None:
    nats = services["nats"]
    assert nats["image"].startswith("nats:")
    cmd = [str(c) for c in nats["command"]]
    assert "-js" in cmd or "--jetstream" in cmd
    assert _flag(cmd, "-m") == "8222" or _flag(cmd, "--http_port") == "8222"
    conf_in_container = _flag(cmd, "-c") or _flag(cmd, "--config")
    source, read_only = _bind_mounts(nats)[conf_in_container]
    conf = (ROOT / source).read_text()
    payload = re.search(r"^\s*max_payload\s*[:=]\s*(\d+)\s*$", conf, re.MULTILINE)
    assert payload, f"{source} must set max_payload (in bytes)"
    assert int(payload.group(1)) >= NATS_MAX_PAYLOAD
    assert read_only
    assert any(str(v).endswith(":/data") for v in nats["volumes"]), "JetStream store needs a volume"
    assert "8222/healthz" in " ".join(_healthcheck(nats))


def test_nats_config_is_valid() -> None:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        pytest.fail("nats-server not found: run ./scripts/install-system-deps.sh")
    out = subprocess.run(
        [binary, "-c", str(ROOT / "deploy" / "nats.conf"), "-t"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_redis_persists(services: dict, compose: dict) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert _flag([str(c) for c in redis["command"]], "--appendonly") == "yes"
    volume = next(str(v) for v in redis["volumes"] if str(v).endswith(":/data"))
    assert volume.split(":")[0] in compose["volumes"], "a named volume keeps the AOF"
    assert _healthcheck(redis)[1:] == ["redis-cli", "ping"]


@pytest.mark.parametrize("name", WORKERS)
def test_workers_reserve_a_gpu_and_scale(services: dict, name: str) -> None:
    svc = services[name]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices
    assert "container_name" not in svc, "container_name breaks `docker compose up --scale`"
    assert "ports" not in svc, "a published host port breaks `--scale`"
    _, args = _module_and_args(svc)
    assert _flag(args, "--role") == name
    assert _flag(args, "--worker-id") is None, "replicas need the default (unique) worker id"


@pytest.mark.parametrize("name", LORAPLEX_SERVICES)
def test_loraplex_service_wiring(services: dict, name: str) -> None:
    svc = services[name]
    assert "build" in svc and svc["image"] == services["gateway"]["image"], "one image for all"
    assert "container_name" not in svc
    for dep in ("nats", "redis"):
        assert svc["depends_on"][dep]["condition"] == "service_healthy"
    module, args = _module_and_args(svc)
    assert module == "loraplex." + name.replace("-", "_")
    assert _flag(args, "--nats-url") == NATS_URL
    assert _flag(args, "--redis-url") == REDIS_URL
    env = svc["environment"]
    assert env["LORAPLEX_NATS_URL"] == NATS_URL and env["LORAPLEX_REDIS_URL"] == REDIS_URL
    mounts = _bind_mounts(svc)
    if _flag(args, "--model") is not None:
        assert _flag(args, "--model") == MODEL_MOUNT
        source, read_only = mounts[MODEL_MOUNT]
        assert source == "./models/demo" and read_only
    tenants = _flag(args, "--tenants")
    if tenants is not None:
        source, read_only = mounts[tenants]
        assert read_only and (ROOT / source).is_file()


@pytest.mark.parametrize("name", ["adapter-store", "gateway"])
def test_http_services_health_checks(services: dict, name: str) -> None:
    svc = services[name]
    test = _healthcheck(svc)
    assert test[:3] == ["CMD", "python", "-c"], "slim images have no curl: use python urllib"
    _, args = _module_and_args(svc)
    assert f"http://127.0.0.1:{_flag(args, '--port')}/ready" in test[3]
    compile(test[3], f"{name} healthcheck", "exec")
    assert _flag(args, "--host") == "0.0.0.0"


def test_gateway_listens_publicly_only_with_tenants(services: dict) -> None:
    _, args = _module_and_args(services["gateway"])
    assert _flag(args, "--host") == "0.0.0.0" and _flag(args, "--tenants")
    assert any(str(p).endswith(":8000") for p in services["gateway"]["ports"])


def test_gateway_metrics_only_on_the_hosts_loopback(services: dict) -> None:
    """/metrics names tenants: its own port, never published on a public host address."""
    _, args = _module_and_args(services["gateway"])
    metrics_port = _flag(args, "--metrics-port")
    assert metrics_port and metrics_port != _flag(args, "--port")
    published = [_expand(str(p)) for p in services["gateway"]["ports"]]
    to_metrics = [p for p in published if p.endswith(f":{metrics_port}")]
    assert to_metrics and all(p.startswith("127.0.0.1:") for p in to_metrics), published


def test_example_tenants_are_placeholders() -> None:
    tenants = load_tenants(ROOT / "deploy" / "tenants.example.yaml")
    assert len(tenants.tenants) == 2 and not tenants.open_mode
    assert all(t.api_key.startswith("change-me") for t in tenants.tenants)


@pytest.mark.parametrize("name", LORAPLEX_SERVICES)
def test_command_matches_the_service_flags(services: dict, name: str) -> None:
    """The compose command parses (flags, choices, types) and uses only flags of --help."""
    module, args = _module_and_args(services[name])
    out = subprocess.run(
        [sys.executable, "-m", module, *args, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, f"{module} {' '.join(args)} --help:\n{out.stdout}{out.stderr}"
    for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out.stdout), (
            f"{name}: {flag} is not a flag of {module} (see its --help)"
        )


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0].startswith("FROM python:3.11-slim")
    arg = next(ln for ln in lines if ln.startswith("ARG TORCH_INDEX_URL="))
    assert "download.pytorch.org/whl/cu12" in arg
    torch_at = next(
        i for i, ln in enumerate(lines) if "TORCH_INDEX_URL}" in ln and "pip install" in ln
    )
    project_at = next(
        i for i, ln in enumerate(lines) if re.search(r"pip install \S*\.\[triton\]", ln)
    )
    assert torch_at < project_at, "install torch (from its index) before the project"
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0"), "the image must run as non-root"
    assert not re.search(r"\.safetensors|huggingface-cli|snapshot_download", text), "no weights"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".venv", ".git", ".loraplex", "models", ".pytest_cache"):
        assert pattern in ignored
