"""docker-compose.yml uses the services' probes: every loraplex service has a healthcheck on its
``/ready``, on the port its own flags give it (``--port`` for the gateway and the adapter store,
``--metrics-port`` for the scheduler and the workers, whose listener is not published), and the
gateway waits for a healthy scheduler.  Parsed without a Docker engine; the probes themselves run
against live processes in tests/stack/test_observability.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loraplex.scheduler.settings import build_parser as scheduler_parser
from loraplex.worker.settings import build_parser as worker_parser

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
PROBE_FLAG = {
    "adapter-store": "--port",
    "gateway": "--port",
    "scheduler": "--metrics-port",
    "prefill": "--metrics-port",
    "decode": "--metrics-port",
}


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _flag(command: list[str], name: str) -> str | None:
    args = [str(a) for a in command]
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.parametrize("name", sorted(PROBE_FLAG))
def test_every_service_is_probed_on_its_ready(services: dict, name: str) -> None:
    svc = services[name]
    port = _flag(svc["command"], PROBE_FLAG[name])
    assert port, f"{name} sets no {PROBE_FLAG[name]}"
    test = svc["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], "slim images have no curl: use python urllib"
    assert f"http://127.0.0.1:{port}/ready" in test[3]
    compile(test[3], f"{name} healthcheck", "exec")


@pytest.mark.parametrize("name", ["scheduler", "prefill", "decode"])
def test_status_listeners_listen_in_the_network_but_are_not_published(
    services: dict, name: str
) -> None:
    svc = services[name]
    assert _flag(svc["command"], "--metrics-host") == "0.0.0.0"  # Prometheus in the network
    assert "ports" not in svc  # the scheduler's series name tenants: never on the host


@pytest.mark.parametrize("name", ["scheduler", "prefill", "decode"])
def test_the_probe_flags_parse(services: dict, name: str) -> None:
    """The compose values are what the services' own parsers accept."""
    argv = [str(a) for a in services[name]["command"]]
    host, port = _flag(argv, "--metrics-host"), _flag(argv, "--metrics-port")
    parser = scheduler_parser() if name == "scheduler" else worker_parser(name)
    extra = [] if name == "scheduler" else ["--model", "/models/model"]
    args = parser.parse_args([*extra, "--metrics-host", str(host), "--metrics-port", str(port)])
    assert (args.metrics_host, args.metrics_port) == ("0.0.0.0", int(str(port)))


def test_the_gateway_waits_for_a_healthy_scheduler(services: dict) -> None:
    assert services["gateway"]["depends_on"]["scheduler"]["condition"] == "service_healthy"
