"""Starting the two configurations with ``loraplex.tooling.launcher``, tenants file, one run per stack."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from pathlib import Path

import httpx

from loraplex.tooling.launcher import Stack, start_stack
from loraplex.tooling.ports import free_port
from loraplex.tooling.up_flags import parse_up_args

from .load import TENANT_NAMES, ServeResult, TenantKey, plan_requests, replay, token_range
from .machine import load_average

CONFIGS = ("disagg", "colocated")


def stack_flags(config: str, args: argparse.Namespace) -> list[str]:
    if config == "disagg":
        return ["--prefill-workers", "1", "--decode-workers", "1"]
    return ["--prefill-workers", "0", "--decode-workers", str(args.colocated_workers)]


def config_label(config: str, args: argparse.Namespace) -> str:
    if config == "disagg":
        return "disagg (1 prefill + 1 decode)"
    n = args.colocated_workers
    return f"colocated ({n} worker{'s' if n != 1 else ''}, role both)"


def write_tenants(path: Path, n: int) -> list[TenantKey]:
    tenants = [
        TenantKey(name, f"sk-bench-{name}-{secrets.token_hex(8)}") for name in TENANT_NAMES[:n]
    ]
    doc = {"tenants": [{"name": t.name, "api_key": t.api_key, "weight": 1.0} for t in tenants]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return tenants


def list_models(base_url: str, api_key: str) -> list[str]:
    """Base model first, then its adapters (sorted)."""
    r = httpx.get(
        base_url + "/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )
    r.raise_for_status()
    data = r.json()["data"]
    base = [m["id"] for m in data if not m.get("parent")]
    adapters = sorted(m["id"] for m in data if m.get("parent"))
    return base[:1] + adapters


def register_adapters(base_url: str, owner: TenantKey, specs: list[str]) -> None:
    for spec in specs:
        name, _, path = spec.partition("=")
        d = Path(path)
        files = [
            (
                "files",
                (
                    "adapter_config.json",
                    (d / "adapter_config.json").read_bytes(),
                    "application/json",
                ),
            ),
            (
                "files",
                (
                    "adapter_model.safetensors",
                    (d / "adapter_model.safetensors").read_bytes(),
                    "application/octet-stream",
                ),
            ),
        ]
        r = httpx.post(
            base_url + "/v1/adapters",
            headers={"Authorization": f"Bearer {owner.api_key}"},
            data={"name": name, "visibility": "public", "replace": "true"},
            files=files,
            timeout=120,
        )
        if r.status_code not in (200, 201):
            raise RuntimeError(
                f"registering adapter {name!r} failed: {r.status_code} {r.text[:300]}"
            )


def run_config(
    config: str,
    rate_index: int,
    args: argparse.Namespace,
    tmp: Path,
    shared: dict,  # type: ignore[type-arg]
) -> ServeResult:
    """A fresh stack for ``config``, one rate's schedule replayed against it."""
    rate = args.rate[rate_index]
    run_dir = tmp / f"{config}-{rate_index}"
    run_dir.mkdir()
    tenants = write_tenants(run_dir / "tenants.json", args.tenants)
    flags = [
        "--port",
        str(free_port()),
        "--run-dir",
        str(run_dir),
        "--tenants",
        str(run_dir / "tenants.json"),
    ]
    flags += [
        "--max-num-seqs",
        str(args.max_num_seqs),
        "--dtype",
        args.dtype,
        *stack_flags(config, args),
    ]
    if args.model:
        flags += ["--model", args.model]
    if args.device:
        flags += ["--device", args.device]
    stack = Stack(run_dir)
    label = config_label(config, args)
    print(
        f"\n== {rate:g} req/s, {label}: starting the stack ({' '.join(stack_flags(config, args))})",
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        base, model_dir, _ = start_stack(parse_up_args(flags), stack)
        startup = time.perf_counter() - t0
        if args.adapter:
            register_adapters(base, tenants[0], args.adapter)
        models = list_models(base, tenants[0].api_key)
        if "plans" not in shared:
            vocab = token_range(model_dir)
            shared["plans"] = [
                plan_requests(args, rate, args.seed * 1000 + i, len(models), vocab)
                for i, rate in enumerate(args.rate)
            ]
            shared["models"], shared["model_dir"] = models, model_dir
        elif models != shared["models"]:
            raise RuntimeError(
                f"models differ between configurations: {models} vs {shared['models']}"
            )
        plan = shared["plans"][rate_index]
        print(
            f"   up in {startup:.1f}s; models {models}; {len(plan)} requests over "
            f"{args.duration:g}s (load average {load_average()})",
            flush=True,
        )
        records, window, before, after = asyncio.run(replay(base, tenants, models, plan))
        stack.check_alive()
    finally:
        stack.stop()
    return ServeResult(config, label, rate, records, window, startup, before, after)
