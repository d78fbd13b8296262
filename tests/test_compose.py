"""docker-compose.yml, the Dockerfile and the deploy files, checked without a Docker engine.

The compose file is parsed with PyYAML; every loraplex service's command is run with ``--help``
appended (so argparse checks each flag and value, then exits) and every flag it uses must appear
in that service's ``--help``: a flag renamed in the code fails here, not in a container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from loraplex.tenants import load_tenants
from loraplex.tooling.servers import NATS_MAX_PAYLOAD
from tests.deploy.service_flags import ParseError, parse_command

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
    # adapter copies in a directory of the container's own layer that its user may write
    copies = _flag(args, "--adapter-disk-cache")
    assert copies and copies.startswith("/var/cache/loraplex/")
    owned = r"chown \S+ (?:\S+ )*/var/cache/loraplex(?:\s|$)"
    assert re.search(owned, " ".join(_dockerfile_lines()))


def test_scheduler_scales_as_replicas(services: dict) -> None:
    """`docker compose up --scale scheduler=2`: replicas elect a leader through Redis."""
    svc = services["scheduler"]
    assert "container_name" not in svc, "container_name breaks `docker compose up --scale`"
    assert "ports" not in svc, "a published host port breaks `--scale`"
    assert svc.get("restart") in ("unless-stopped", "always"), "a deposed leader exits (3)"
    _, args = _module_and_args(svc)
    assert _flag(args, "--redis-url") == REDIS_URL, "the lease and the ledger live in Redis"
    assert _flag(args, "--scheduler-id") is None, "replicas need the default (unique) id"


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
    """The compose command parses with the service's own parser (flags spelled out, choices,
    types), so a flag renamed in the code fails here, not in a container."""
    module, args = _module_and_args(services[name])
    parse_command(module, args)


def test_a_misspelled_flag_is_caught() -> None:
    with pytest.raises(ParseError, match="--max-num is not a flag"):
        parse_command("loraplex.decode", ["--model", "m", "--max-num", "4"])  # an abbreviation
    with pytest.raises(ParseError):
        parse_command("loraplex.gateway", ["--port", "eighty"])


def _dockerfile_lines() -> list[str]:
    """Instructions with continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [
        ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


def _dockerfile_args(lines: list[str]) -> dict[str, str]:
    args = {}
    for ln in lines:
        if ln.startswith("ARG ") and "=" in ln:
            name, value = ln[4:].split("=", 1)
            args[name] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
    return args


def test_dockerfile_pins_torch_and_triton_to_a_tested_cuda_build() -> None:
    lines = _dockerfile_lines()
    assert lines[0].startswith("FROM python:3.11-slim")
    args = _dockerfile_args(lines)
    assert args["TORCH_VERSION"] == "2.13.0", "the torch the test suite runs (Makefile TORCH_SPEC)"
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()
    assert re.fullmatch(r"cu12\d", args["TORCH_VARIANT"]), "a CUDA 12.x wheel index"
    assert args["TORCH_INDEX_URL"] == f"https://download.pytorch.org/whl/{args['TORCH_VARIANT']}"
    torch_at = next(i for i, ln in enumerate(lines) if '"torch==${TORCH_VERSION}"' in ln)
    assert '--index-url "${TORCH_INDEX_URL}"' in lines[torch_at]
    # the exact torch + triton are frozen into a constraints file every later pip obeys
    assert "grep -iE '^(torch|triton)=='" in lines[torch_at]
    constraint_at = next(i for i, ln in enumerate(lines) if ln.startswith("ENV PIP_CONSTRAINT="))
    constraints = lines[constraint_at].split("=", 1)[1]
    assert f"> {constraints}" in lines[torch_at]
    project_at = next(
        i for i, ln in enumerate(lines) if re.search(r"pip install \S*\.\[triton[,\]]", ln)
    )
    assert torch_at < constraint_at < project_at, "torch first, then its pins, then the project"
    # the scheduler's compiled core, built beside the installed sources (loraplex/native.py)
    assert ".[triton,native]" in lines[project_at]
    assert "python -m loraplex.tooling.build_native" in lines[project_at]
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TRITON_CPU_VERSION"]), "CPU image: triton pinned"


def test_dockerfile_runs_as_non_root_without_weights() -> None:
    text = DOCKERFILE.read_text()
    lines = _dockerfile_lines()
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as non-root"
    assert re.search(rf"useradd .*--uid {users[-1].split(':')[0]}\b", text)
    assert not re.search(r"\.safetensors|huggingface-cli|snapshot_download", text), "no weights"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".venv", ".git", ".loraplex", "models", ".pytest_cache"):
        assert pattern in ignored
    # the lease directory of --device auto exists and belongs to the runtime user
    env = dict(ln[4:].split("=", 1) for ln in lines if ln.startswith("ENV ") and " " not in ln[4:])
    lease_dir = env["LORAPLEX_GPU_LEASE_DIR"]
    assert re.search(rf"chown \S+ {re.escape(lease_dir)}", " ".join(lines))


def test_dockerfile_cmd_parses() -> None:
    cmd = next(ln for ln in _dockerfile_lines() if ln.startswith("CMD "))
    argv = json.loads(cmd[4:])
    assert argv[0] == "loraplex"
    assert re.search(
        r'^loraplex = "loraplex\.tooling\.cli:main"', (ROOT / "pyproject.toml").read_text(), re.M
    )
    with pytest.raises(ParseError, match="SystemExit|0"):  # --help exits 0 after printing
        parse_command("loraplex", argv[1:])


def test_cpu_image_build_arg_is_documented() -> None:
    """The README / docs show the CPU-only image build with the build arg the Dockerfile has."""
    args = _dockerfile_args(_dockerfile_lines())
    docs = (ROOT / "README.md").read_text() + (ROOT / "docs" / "deploy.md").read_text()
    assert "TORCH_VARIANT" in args
    assert "--build-arg TORCH_VARIANT=cpu" in docs


class _ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags (!override replaces, !reset removes) as plain values."""


_ComposeLoader.add_constructor("!override", lambda loader, node: (
    loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode)
    else loader.construct_sequence(node, deep=True)
))  # fmt: skip
_ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def _merge(base: dict, override: dict) -> dict:
    """Compose's override rules for the keys the override file uses: maps merge key by key,
    volumes merge by target, !override values replace."""
    out = dict(base)
    for key, value in override.items():
        if key == "volumes" and isinstance(value, list):
            by_target = {str(v).split(":")[1]: v for v in base.get(key, []) if isinstance(v, str)}
            by_target.update({str(v).split(":")[1]: v for v in value})
            dicts = [v for v in base.get(key, []) if isinstance(v, dict)]
            out[key] = dicts + list(by_target.values())
        elif isinstance(value, dict) and isinstance(base.get(key), dict) and key != "deploy":
            out[key] = _merge(base[key], value)
        else:
            out[key] = value
    return out


def test_multi_gpu_override_places_one_worker_per_gpu(compose: dict) -> None:
    """deploy/compose.multi-gpu.yml: every worker sees all GPUs and runs --device auto with one
    lease directory shared by all worker containers; the default file's count: 1 is replaced."""
    override = yaml.load((ROOT / "deploy" / "compose.multi-gpu.yml").read_text(), _ComposeLoader)
    assert set(override["services"]) == set(WORKERS)
    assert "gpu-leases" in override["volumes"]
    lease_dirs = set()
    for name in WORKERS:
        svc = _merge(compose["services"][name], override["services"][name])
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
        env = {k: _expand(str(v)) for k, v in svc["environment"].items()}
        assert env["LORAPLEX_DEVICE"] == "auto"
        mounts = {
            str(v).split(":")[1]: str(v).split(":")[0] for v in svc["volumes"] if isinstance(v, str)
        }
        assert mounts[env["LORAPLEX_GPU_LEASE_DIR"]] == "gpu-leases"  # a named volume: shared
        lease_dirs.add(env["LORAPLEX_GPU_LEASE_DIR"])
        # the worker's parser reads these variables as its flag defaults
        module, args = _module_and_args(svc)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            parsed = parse_command(module, args)
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        assert parsed.device == "auto" and parsed.gpu_memory_utilization == 0.9
        assert parsed.gpu_lease_dir == env["LORAPLEX_GPU_LEASE_DIR"]
    assert len(lease_dirs) == 1


def test_default_workers_share_gpu0_within_its_memory(compose: dict) -> None:
    """Without the override, count: 1 puts prefill and decode on GPU 0: their default shares
    of its memory must add up to at most 1."""
    share = float(_expand(compose["x-loraplex"]["environment"]["LORAPLEX_GPU_MEMORY_UTILIZATION"]))
    assert share * len(WORKERS) <= 1.0
