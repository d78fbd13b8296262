"""``loraplex up``: the whole stack on one machine, as child processes; Ctrl-C stops them all.

Starts nats-server and redis-server itself when no URLs are given (data in the run directory),
writes and registers the demo model's adapters when no model is given, then the adapter store,
the scheduler, the workers and the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from loraplex.cli_help import DefaultsHelpFormatter
from loraplex.scheduler.policies.registry import POLICIES
from loraplex.tooling.servers import free_port, start_nats, start_redis
from loraplex.tooling.stack import Stack

__all__ = ["Stack", "build_parser", "parse_up_args", "start_stack", "up"]


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.formatter_class = DefaultsHelpFormatter  # every flag's --help shows its default
    p.add_argument(
        "--model", default=None, help="Hugging Face model directory (default: a tiny demo model)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="gateway listen address (non-loopback needs --tenants)"
    )
    p.add_argument("--port", type=int, default=8000, help="gateway port")
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
    p.add_argument("--max-num-seqs", type=int, default=32, help="running batch size per worker")
    p.add_argument("--max-loras", type=int, default=8, help="adapter slots per worker")
    p.add_argument("--max-lora-rank", type=int, default=64)
    p.add_argument(
        "--num-kv-blocks", type=int, default=None, help="KV blocks per worker (default: derived)"
    )
    p.add_argument(
        "--max-model-len", type=int, default=None, help="context per request (default: the model's)"
    )
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="tokens per prefill step; longer prompts are chunked (default: the worker's, 4096)",
    )
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs in the workers")
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="workers reuse K/V of shared prompt prefixes",
    )
    p.add_argument("--fairness", choices=list(POLICIES), default="vtc")
    p.add_argument(
        "--prefix-routing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scheduler sends a prompt prefix back to the worker that prefilled it",
    )
    p.add_argument(
        "--rpm-limit", type=int, default=60, help="requests per minute per tenant (--fairness rpm)"
    )
    p.add_argument("--nats-url", default=None, help="use this NATS (default: start a nats-server)")
    p.add_argument(
        "--redis-url", default=None, help="use this Redis (default: start a redis-server)"
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="worker device (default: cuda when available)")
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
        "--restart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart a service that exits (with backoff) instead of leaving it down",
    )
    return p


def worker_argv(args: argparse.Namespace, model: str, common: list[str]) -> list[str]:
    """Flags every prefill/decode worker gets from ``loraplex up``'s own flags."""
    argv = [
        "--model", model, "--dtype", args.dtype, "--max-num-seqs", str(args.max_num_seqs),
        "--max-loras", str(args.max_loras), "--max-lora-rank", str(args.max_lora_rank), *common,
    ]  # fmt: skip
    optional = {
        "--device": args.device,
        "--num-kv-blocks": args.num_kv_blocks,
        "--max-model-len": args.max_model_len,
        "--max-num-batched-tokens": args.max_num_batched_tokens,
    }
    for flag, value in optional.items():
        if value:
            argv += [flag, str(value)]
    if args.enforce_eager:
        argv.append("--enforce-eager")
    if not args.enable_prefix_caching:
        argv.append("--no-enable-prefix-caching")
    return argv


def _wait_http(url: str, stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def _workers_joined(scheduler_metrics: str) -> int:
    """Live workers the scheduler counts in its pools (``loraplex_scheduler_pool_workers``)."""
    lines = scheduler_metrics.splitlines()
    return int(
        sum(float(x.split()[-1]) for x in lines if x.startswith("loraplex_scheduler_pool_workers{"))
    )


def _status_port(stack: Stack, name: str) -> list[str]:
    """A free port for ``name``'s /health, /ready, /metrics listener (recorded in the stack)."""
    port = free_port()
    stack.status[name] = f"http://127.0.0.1:{port}"
    return ["--metrics-port", str(port)]


def _wait_workers(metrics_url: str, expected: int, stack: Stack, timeout: float) -> None:
    """Wait until the scheduler has heard every worker (its /metrics counts them), so the first
    request after the banner does not meet a 503 while models still load."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            with urllib.request.urlopen(metrics_url, timeout=2.0) as r:
                body = r.read().decode()
            if _workers_joined(body) >= expected:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"only some of the {expected} workers joined within {timeout}s")


async def _register_demo_adapters(redis_url: str, adapters: list, owner: str) -> None:  # type: ignore[type-arg]
    from loraplex.adapters.store import AdapterStore

    store = AdapterStore.from_url(redis_url)
    try:
        for a in adapters:
            cfg = (a.path / "adapter_config.json").read_bytes()
            weights = (a.path / "adapter_model.safetensors").read_bytes()
            await store.register(
                a.name, owner, cfg, weights, rank=a.rank, alpha=a.alpha, targets=a.target_modules,
                visibility="public", replace=True,
            )  # fmt: skip
    finally:
        await store.close()


def _on_stop_signals(handler: Callable[[int, object], None]) -> None:
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def up(args: argparse.Namespace) -> int:
    stack = Stack(Path(args.run_dir or Path.cwd() / ".loraplex" / "run").resolve())

    def again(signum: int, frame: object) -> None:
        print("loraplex: stopping now", flush=True)
        stack.hurry()

    def first(signum: int, frame: object) -> None:
        _on_stop_signals(again)  # from here on, a second signal only hurries the drain
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM (docker stop, systemd) both drain and stop every process started here,
    # even when the shell that launched us ignores SIGINT for background jobs.  The servers and
    # services run in their own sessions, so the terminal's Ctrl-C reaches only this process,
    # which stops them in order (Stack.stop).
    _on_stop_signals(first)
    try:
        base, model, demo_adapters = start_stack(args, stack)
        _print_banner(base, model, demo_adapters, args, stack.run_dir, stack.urls["metrics"])
        for name, url in stack.status.items():
            print(f"  {name}: {url}/metrics, /health, /ready", flush=True)
        while True:  # the supervisor thread restarts what exits; only a signal ends this
            time.sleep(3600)
    except KeyboardInterrupt:
        print(
            "\nstopping loraplex: requests in flight finish first (Ctrl-C again to stop now) ...",
            flush=True,
        )
        return 0
    finally:
        _on_stop_signals(again)
        stack.stop()


def parse_up_args(argv: list[str]) -> argparse.Namespace:
    """Flags of ``loraplex up`` as a namespace (for tests and benchmarks that start stacks)."""
    return build_parser(argparse.ArgumentParser()).parse_args(argv)


def start_stack(args: argparse.Namespace, stack: Stack) -> tuple[str, str, list]:  # type: ignore[type-arg]
    """Start every process of the stack and wait until the gateway is ready.

    Returns (gateway base URL, model dir, demo adapters registered).  ``stack`` records what was
    started so the caller can stop it (also on failure).
    """
    run_dir = stack.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    demo_adapters = []
    model = args.model
    if model is None:
        from loraplex.tooling.demo import write_demo_model

        info = write_demo_model(run_dir / "demo-model", num_adapters=4)
        model, demo_adapters = str(info.model_dir), list(info.adapters)
        print(f"no --model given: using the tiny demo model in {model}", flush=True)
    nats_url, redis_url = args.nats_url, args.redis_url
    if nats_url is None:
        stack.servers.append(start_nats(run_dir / "nats"))
        nats_url = stack.servers[-1].url
    if redis_url is None:
        stack.servers.append(start_redis(run_dir / "redis"))
        redis_url = stack.servers[-1].url
    tenants = ["--tenants", args.tenants] if args.tenants else []
    # path registrations run in both: the adapter store's routes and the gateway's copy of them
    root = (
        ["--adapters-root", str(Path(args.adapters_root).resolve())] if args.adapters_root else []
    )
    if demo_adapters:
        owner = "default"
        if args.tenants:
            from loraplex.tenants import load_tenants

            owner = load_tenants(args.tenants).tenants[0].name
        asyncio.run(_register_demo_adapters(redis_url, demo_adapters, owner))
    store_port = args.adapter_store_port or free_port()
    metrics_port = args.metrics_port or free_port()  # /metrics names tenants: not on --port
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    common = ["--nats-url", nats_url, "--redis-url", redis_url]
    stack.spawn(
        "adapter-store", "loraplex.adapter_store", "--port", str(store_port), "--model", model,
        "--max-lora-rank", str(args.max_lora_rank), *common, *tenants, *root,
    )  # fmt: skip
    for i in range(max(1, args.schedulers)):  # replicas: the first to take the lease leads
        name = "scheduler" if i == 0 else f"scheduler-{i}"
        stack.spawn(
            name,
            "loraplex.scheduler",
            "--scheduler-id",
            name,
            "--fairness",
            args.fairness,
            "--rpm-limit",
            str(args.rpm_limit),
            *([] if args.prefix_routing else ["--no-prefix-routing"]),
            *common,
            *tenants,
            *_status_port(stack, name),
        )
    worker_args = worker_argv(args, model, common)
    for i in range(args.prefill_workers):
        name = f"prefill-{i}"
        stack.spawn(
            name, "loraplex.prefill", "--worker-id", name, *worker_args, *_status_port(stack, name)
        )
    decode_role = "decode" if args.prefill_workers else "both"
    for i in range(args.decode_workers):
        stack.spawn(
            f"decode-{i}",
            "loraplex.decode",
            "--role",
            decode_role,
            "--worker-id",
            f"decode-{i}",
            *worker_args,
            *_status_port(stack, f"decode-{i}"),
        )
    stack.spawn(
        "gateway", "loraplex.gateway", "--host", args.host, "--port", str(args.port), "--model", model,
        "--max-lora-rank", str(args.max_lora_rank), *common, *tenants, *root,
        *(["--max-model-len", str(args.max_model_len)] if args.max_model_len else []),
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    _wait_http(f"http://127.0.0.1:{store_port}/ready", stack, timeout=60)
    workers = args.prefill_workers + args.decode_workers
    _wait_workers(stack.status["scheduler"] + "/metrics", workers, stack, timeout=600)
    # The gateway is ready once the scheduler's broadcast shows a worker set that can serve.
    _wait_http(f"{base}/ready", stack, timeout=120)
    stack.urls.update(
        gateway=base, adapter_store=f"http://127.0.0.1:{store_port}", nats=nats_url, redis=redis_url,
        metrics=metrics,
    )  # fmt: skip
    if args.restart:
        stack.supervise()
    return base, model, demo_adapters


def _print_banner(
    base: str, model: str, adapters: list, args: argparse.Namespace, run_dir: Path, metrics: str
) -> None:  # type: ignore[type-arg]
    model_id = os.path.basename(os.path.normpath(model))
    example = adapters[0].name if adapters else model_id
    body = json.dumps({"model": example, "prompt": "Hello", "max_tokens": 16})
    auth = ' -H "Authorization: Bearer $API_KEY"' if args.tenants else ""
    print(
        f"\nloraplex is up: {base}/v1  (logs in {run_dir})\n"
        f"  models:     curl {base}/v1/models{auth}\n"
        f"  completion: curl {base}/v1/completions{auth} -H 'Content-Type: application/json' -d '{body}'\n"
        f"  metrics:    curl {metrics}  (Prometheus; loopback only)\n"
        f"Press Ctrl-C to stop every process it started.\n",
        flush=True,
    )
