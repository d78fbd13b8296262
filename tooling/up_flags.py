"""``loraplex up``'s flags, and the argv each process it starts gets from them.

A flag that ``loraplex up`` passes on to a service as it is (``FORWARDED``) is not declared here:
``build_parser`` adds the service's own definition from its settings module, so its type, choices,
default and help are the service's (``UP_DEFAULTS`` lists the defaults that differ on purpose).
What is declared here are ``loraplex up``'s own flags: what to start and where, and values it
changes before it passes them on (``--model``, ``--nats-url``, ``--adapters-root``, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loraplex.adapters.registration.preload import parse_lora_module
from loraplex.cli_flags import Flag, by_name
from loraplex.cli_help import DefaultsHelpFormatter
from loraplex.gateway.settings import flags as gateway_flags
from loraplex.scheduler.settings import flags as scheduler_flags
from loraplex.worker.settings import flags as worker_flags

__all__ = [
    "FORWARDED",
    "PASSED_ON",
    "UP_DEFAULTS",
    "build_parser",
    "definitions",
    "forwarded_argv",
    "gateway_argv",
    "parse_up_args",
    "scheduler_argv",
    "store_argv",
    "worker_argv",
]

WORKER, SCHEDULER, GATEWAY, STORE = "worker", "scheduler", "gateway", "adapter-store"

# flag -> the services it is passed to as it is; the first one's settings module defines it
FORWARDED: dict[str, tuple[str, ...]] = {
    "--host": (GATEWAY,),
    "--port": (GATEWAY,),
    "--max-num-seqs": (WORKER,),
    "--max-loras": (WORKER,),
    "--max-lora-rank": (WORKER, STORE, GATEWAY),
    "--num-kv-blocks": (WORKER,),
    "--max-model-len": (WORKER, GATEWAY),
    "--max-num-batched-tokens": (WORKER,),
    "--enforce-eager": (WORKER,),
    "--enable-prefix-caching": (WORKER,),
    "--fairness": (SCHEDULER,),
    "--prefix-routing": (SCHEDULER,),
    "--prefix-cache-scope": (GATEWAY,),
    "--tool-call-parser": (GATEWAY,),
    "--reasoning-parser": (GATEWAY,),
    "--exclude-tools-when-tool-choice-none": (GATEWAY,),
    "--responses-ttl": (GATEWAY,),
    "--batches-per-tenant": (GATEWAY,),
    "--batch-concurrency": (GATEWAY,),
    "--rpm-limit": (SCHEDULER,),
    "--gateway-timeout": (SCHEDULER,),
    "--max-queue-wait": (SCHEDULER,),
    "--preempt-after": (SCHEDULER,),
    "--dtype": (WORKER,),
    "--device": (WORKER,),
    "--adapter-disk-cache-mb": (WORKER,),
    "--adapter-disk-trust": (WORKER,),
}
# One machine runs every worker of the stack: a smaller batch than a worker's own default.
UP_DEFAULTS: dict[str, object] = {"--max-num-seqs": 32}
# loraplex up's own flags that reach services under the same name, changed or used here first:
# the demo model, servers it starts, the tenants it reads, a resolved root, a free port.
PASSED_ON = (
    "--model",
    "--nats-url",
    "--redis-url",
    "--tenants",
    "--adapters-root",
    "--metrics-port",
)


def definitions() -> dict[str, Flag]:
    """Each forwarded flag as the service that defines it declares it (environment read now)."""
    owners = {
        WORKER: by_name(worker_flags()),
        SCHEDULER: by_name(scheduler_flags()),
        GATEWAY: by_name(gateway_flags()),
    }
    return {name: owners[to[0]][name] for name, to in FORWARDED.items()}


def _forward(p: argparse.ArgumentParser, reused: dict[str, Flag], *names: str) -> None:
    for name in names:
        overrides = {"default": UP_DEFAULTS[name]} if name in UP_DEFAULTS else {}
        reused[name].add_to(p, help_prefix=", ".join(FORWARDED[name]), **overrides)


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.formatter_class = DefaultsHelpFormatter  # every flag's --help shows its default
    reused = definitions()
    p.add_argument(
        "--model", default=None, help="Hugging Face model directory (default: a tiny demo model)"
    )
    _forward(p, reused, "--host", "--port")
    p.add_argument(
        "--tenants", default=None, help="tenants file (JSON/YAML) (default: none, one open tenant)"
    )
    p.add_argument(
        "--prefill-workers",
        type=int,
        default=1,
        help="0 runs the decode workers colocated (role both)",
    )
    p.add_argument("--decode-workers", type=int, default=1)
    p.add_argument(
        "--schedulers",
        type=int,
        default=1,
        help="scheduler replicas: one leads (a lease in Redis), the others take over if it dies",
    )
    _forward(
        p, reused, "--max-num-seqs", "--max-loras", "--max-lora-rank", "--num-kv-blocks",
        "--max-model-len", "--max-num-batched-tokens", "--enforce-eager",
        "--enable-prefix-caching", "--fairness", "--prefix-routing", "--prefix-cache-scope",
        "--tool-call-parser", "--reasoning-parser", "--exclude-tools-when-tool-choice-none",
        "--responses-ttl", "--batches-per-tenant", "--batch-concurrency", "--rpm-limit",
        "--gateway-timeout", "--max-queue-wait", "--preempt-after",
    )  # fmt: skip
    p.add_argument("--nats-url", default=None, help="use this NATS (default: start a nats-server)")
    p.add_argument(
        "--redis-url", default=None, help="use this Redis (default: start a redis-server)"
    )
    _forward(p, reused, "--dtype", "--device", "--adapter-disk-cache-mb", "--adapter-disk-trust")
    p.add_argument(
        "--run-dir", default=None, help="logs and server data (default: ./.loraplex/run)"
    )
    p.add_argument("--adapter-store-port", type=int, default=None, help="default: a free port")
    p.add_argument(
        "--adapters-root",
        default=None,
        help="allow path registrations (POST /v1/adapters {name, path}, vLLM's "
        "/v1/load_lora_adapter lora_path) of directories below it (default: off)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="gateway's Prometheus /metrics listener on 127.0.0.1 (default: a free port)",
    )
    p.add_argument(
        "--lora-modules",
        nargs="+",
        type=parse_lora_module,
        default=[],
        metavar="NAME=PATH",
        help="adapters to serve from the start, as vLLM's: NAME=PATH or "
        '{"name": ..., "path": ...}; validated like a path registration, stored public '
        "(default: none)",
    )
    p.add_argument(
        "--restart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart a service that exits (with backoff) instead of leaving it down",
    )
    return p


def parse_up_args(argv: list[str]) -> argparse.Namespace:
    """Flags of ``loraplex up`` as a namespace (for tests and benchmarks that start stacks)."""
    return build_parser(argparse.ArgumentParser()).parse_args(argv)


def forwarded_argv(args: argparse.Namespace, service: str) -> list[str]:
    """The ``FORWARDED`` flags ``service`` gets, with ``loraplex up``'s values."""
    reused = definitions()
    return [
        arg
        for name, to in FORWARDED.items()
        if service in to
        for arg in reused[name].argv(getattr(args, reused[name].dest))
    ]


def _tenants(args: argparse.Namespace) -> list[str]:
    return ["--tenants", args.tenants] if args.tenants else []


def _adapters_root(args: argparse.Namespace) -> list[str]:
    # path registrations run in both: the adapter store's routes and the gateway's copy of them
    if not args.adapters_root:
        return []
    return ["--adapters-root", str(Path(args.adapters_root).resolve())]


def worker_argv(args: argparse.Namespace, model: str, common: list[str]) -> list[str]:
    """Flags every prefill/decode worker gets from ``loraplex up``'s own flags."""
    return ["--model", model, *common, *forwarded_argv(args, WORKER)]


def scheduler_argv(args: argparse.Namespace, name: str, common: list[str]) -> list[str]:
    return ["--scheduler-id", name, *forwarded_argv(args, SCHEDULER), *common, *_tenants(args)]


def store_argv(args: argparse.Namespace, model: str, port: int, common: list[str]) -> list[str]:
    return [
        "--port", str(port), "--model", model, *forwarded_argv(args, STORE), *common,
        *_tenants(args), *_adapters_root(args),
    ]  # fmt: skip


def gateway_argv(
    args: argparse.Namespace, model: str, common: list[str], metrics_port: int
) -> list[str]:
    return [
        *forwarded_argv(args, GATEWAY), "--model", model, *common, *_tenants(args),
        *_adapters_root(args), "--metrics-port", str(metrics_port),
    ]  # fmt: skip
