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
import shutil
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from loraplex.adapters.registration.preload import PreloadError
from loraplex.tooling import init_process
from loraplex.tooling.ports import free_port
from loraplex.tooling.servers import start_nats, start_redis
from loraplex.tooling.stack import Stack
from loraplex.tooling.supervisor import http_ready
from loraplex.tooling.up_flags import gateway_argv, scheduler_argv, store_argv, worker_argv

__all__ = ["Stack", "start_stack", "up"]


def _wait_http(url: str, stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        if http_ready(url, timeout_s=1.0):
            return
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


def _url_host(host: str) -> str:
    """``host`` as a URL's host that reaches the gateway from here: a wildcard bind is reached on
    loopback, and an IPv6 literal goes in brackets."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


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


async def _register_lora_modules(
    args: argparse.Namespace, model: str, redis_url: str, owner: str
) -> list[str]:
    from loraplex import env
    from loraplex.adapters.registration.preload import register_lora_modules

    max_rank = args.max_lora_rank or env.MAX_LORA_RANK.get()  # what the workers will take
    return await register_lora_modules(
        redis_url, model, args.lora_modules, owner, max_rank=max_rank,
        max_bytes=int(env.MAX_ADAPTER_MB.get() * 1024 * 1024),
    )  # fmt: skip


def _on_stop_signals(handler: Callable[[int, object], None]) -> None:
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def up(args: argparse.Namespace) -> int:
    if init_process.needed():  # PID 1 of a container: someone must reap orphans (see there)
        return init_process.run_as_init(lambda: _up(args))
    return _up(args)


def _up(args: argparse.Namespace) -> int:
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
    except PreloadError as e:  # a --lora-modules adapter: the operator's to fix, no traceback
        print(f"loraplex up: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        _on_stop_signals(again)
        stack.stop()


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
    owner = "default"  # the stack's own adapters belong to the first tenant, public
    if args.tenants:
        from loraplex.tenants import load_tenants

        owner = load_tenants(args.tenants).tenants[0].name
    if demo_adapters:
        asyncio.run(_register_demo_adapters(redis_url, demo_adapters, owner))
    if args.lora_modules:
        names = asyncio.run(_register_lora_modules(args, model, redis_url, owner))
        print(f"--lora-modules: serving {', '.join(names)}", flush=True)
    store_port = args.adapter_store_port or free_port()
    metrics_port = args.metrics_port or free_port()  # /metrics names tenants: not on --port
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    common = ["--nats-url", nats_url, "--redis-url", redis_url]
    stack.spawn(
        "adapter-store", "loraplex.adapter_store", *store_argv(args, model, store_port, common),
        ready_url=f"http://127.0.0.1:{store_port}/ready",
    )  # fmt: skip
    for i in range(max(1, args.schedulers)):  # replicas: the first to take the lease leads
        name = "scheduler" if i == 0 else f"scheduler-{i}"
        argv = [*scheduler_argv(args, name, common), *_status_port(stack, name)]
        stack.spawn(name, "loraplex.scheduler", *argv, ready_url=stack.status[name] + "/ready")
    worker_args = worker_argv(args, model, common)
    decode_role = "decode" if args.prefill_workers else "both"
    worker_specs = [(f"prefill-{i}", "loraplex.prefill", []) for i in range(args.prefill_workers)]
    worker_specs += [
        (f"decode-{i}", "loraplex.decode", ["--role", decode_role])
        for i in range(args.decode_workers)
    ]
    # Each worker's adapter copies outlive its restarts (the supervisor's), not the stack.
    shutil.rmtree(run_dir / "adapter-cache", ignore_errors=True)
    for name, module, role in worker_specs:
        disk = ["--adapter-disk-cache", str(run_dir / "adapter-cache" / name)]
        argv = [*role, "--worker-id", name, *worker_args, *disk, *_status_port(stack, name)]
        stack.spawn(name, module, *argv, ready_url=stack.status[name] + "/ready")
    base = f"http://{_url_host(args.host)}:{args.port}"
    # The gateway's /ready also needs workers that can serve; /health says it came up.
    gateway = gateway_argv(args, model, common, metrics_port)
    stack.spawn("gateway", "loraplex.gateway", *gateway, ready_url=f"{base}/health")
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
