"""Worker settings: one frozen dataclass built from flags (defaults from LORAPLEX_* variables)."""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import dataclass

from loraplex import env
from loraplex.cli_flags import Flag, add_flags, checked, flag, status_listener_flags
from loraplex.cli_help import DefaultsHelpFormatter

ROLES = ("prefill", "decode", "both")


@dataclass(frozen=True)
class WorkerSettings:
    role: str
    model: str
    nats_url: str
    redis_url: str | None
    worker_id: str
    dtype: str = "auto"
    device: str | None = None
    gpu_memory_utilization: float = 0.9
    gpu_lease_dir: str = ""
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 4096
    max_model_len: int | None = None
    num_kv_blocks: int | None = None
    block_size: int = 16
    max_loras: int = 8
    max_lora_rank: int = 64
    enforce_eager: bool = False
    max_cuda_graph_batch_size: int = 256
    enable_prefix_caching: bool = True
    host_cache_mb: int = 1024
    adapter_disk_cache: str = ""  # "" keeps no disk copies (adapters.disk_copies)
    adapter_disk_cache_mb: int = 4096
    adapter_disk_trust_s: float = 600.0
    heartbeat_interval_s: float = 0.5
    kv_timeout_s: float = 10.0
    # /health, /ready, /metrics (http_status.py); 0: none (the flag's default is 8004).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("--gpu-memory-utilization must be in (0, 1]")
        if self.adapter_disk_cache_mb < 1:
            raise ValueError("--adapter-disk-cache-mb must be positive")
        if not self.adapter_disk_trust_s >= 0:
            raise ValueError("--adapter-disk-trust must be >= 0")


_fraction = checked(float, lambda v: 0.0 < v <= 1.0, "in (0, 1]: a fraction of the total")
_positive_int = checked(int, lambda v: v >= 1, "positive")
_seconds = checked(float, lambda v: 0.0 <= v < float("inf"), "a number of seconds >= 0")


def flags(default_role: str = "both") -> tuple[Flag, ...]:
    """Every worker flag (``loraplex up`` reuses some); defaults read the environment now."""
    return (
        flag(
            "--role",
            choices=ROLES,
            default=default_role,
            help="prefill, decode, or both (colocated)",
        ),
        flag("--model", required=True, help="Hugging Face model directory"),
        flag("--nats-url", default=env.NATS_URL.get()),
        flag(
            "--redis-url",
            default=env.REDIS_URL.get() or None,
            help=f"adapter store (for paging adapters) [{env.REDIS_URL.name}]",
        ),
        flag("--worker-id", default=None, help="unique id (default: role-hostname-pid-random)"),
        flag(
            "--dtype",
            default="auto",
            choices=["auto", "float32", "float16", "bfloat16"],
            help="of weights and activations; auto: bfloat16 on CUDA, float32 on CPU",
        ),
        flag(
            "--device",
            default=env.DEVICE.get() or None,
            help="cpu, cuda, cuda:N, or auto: lease a GPU no other worker on this host holds "
            "(default: cuda when available)",
        ),
        flag(
            "--gpu-memory-utilization",
            type=_fraction,
            default=env.GPU_MEMORY_UTILIZATION.get(),
            help="fraction of the GPU's total memory for weights + activations + K/V cache, as in "
            "vLLM (default: %(default)s; give workers that share a GPU shares that add up to <= 1)",
        ),
        flag(
            "--gpu-lease-dir",
            default=env.GPU_LEASE_DIR.get(),
            help="where --device auto keeps one lock file per GPU; share it between the workers of "
            "a host (default: %(default)s)",
        ),
        flag("--max-num-seqs", type=int, default=64, help="requests in the running batch"),
        flag(
            "--max-num-batched-tokens",
            type=int,
            default=4096,
            help="token budget of a prefill step",
        ),
        flag(
            "--max-model-len",
            type=int,
            default=None,
            help="context per request (default: the model's max_position_embeddings, at most 8192)",
        ),
        flag(
            "--num-kv-blocks",
            type=int,
            default=None,
            help="KV-cache size in blocks (default: derived)",
        ),
        flag("--block-size", type=int, default=env.BLOCK_SIZE.get()),
        flag("--max-loras", type=int, default=8, help="adapter slots on the device"),
        flag("--max-lora-rank", type=int, default=64, help="largest adapter rank a slot holds"),
        flag(
            "--enforce-eager",
            action="store_true",
            help="never capture CUDA graphs for decode steps (they are used on CUDA by default)",
        ),
        flag(
            "--max-cuda-graph-batch-size",
            type=int,
            default=256,
            help="largest decode batch run from a CUDA graph (capped at --max-num-seqs)",
        ),
        flag(
            "--enable-prefix-caching",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="reuse the K/V of full blocks shared with earlier prompts of the same adapter",
        ),
        flag("--host-cache-mb", type=int, default=1024, help="host-memory adapter cache budget"),
        flag(
            "--adapter-disk-cache",
            default="",
            metavar="DIR",
            help="keep a copy of every adapter paged in under DIR (one directory per worker; it "
            "must outlive the process, e.g. an emptyDir): a worker restarted while Redis is down "
            "serves them from there (default: none)",
        ),
        flag(
            "--adapter-disk-cache-mb",
            type=_positive_int,
            default=4096,
            help="budget of the adapter disk copies (--adapter-disk-cache); the least recently "
            "confirmed go first",
        ),
        flag(
            "--adapter-disk-trust",
            type=_seconds,
            default=600.0,
            help="seconds a disk copy may stand in for Redis after it was last confirmed current "
            "(as LORAPLEX_GATEWAY_ADAPTER_STALE_S for the gateway's names)",
        ),
        flag("--heartbeat-interval", type=float, default=0.5, help="seconds between heartbeats"),
        flag(
            "--kv-timeout",
            type=float,
            default=10.0,
            help="seconds a K/V hand-over may wait: for the decode worker to take it (KVBegin, "
            "resent every 2 s meanwhile), and between two of its chunks",
        ),
        *status_listener_flags(
            env.WORKER_METRICS_HOST,
            env.WORKER_METRICS_PORT,
            port_note=", one per worker process",
        ),
    )


def build_parser(default_role: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m loraplex.{default_role if default_role != 'both' else 'decode'}",
        description=f"loraplex {default_role} worker: wraps the engine and serves requests over NATS.",
        formatter_class=DefaultsHelpFormatter,
    )
    return add_flags(p, flags(default_role))


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    worker_id = (
        args.worker_id or f"{args.role}-{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    return WorkerSettings(
        role=args.role,
        model=args.model,
        nats_url=args.nats_url,
        redis_url=args.redis_url,
        worker_id=worker_id,
        dtype=args.dtype,
        device=args.device,
        gpu_memory_utilization=args.gpu_memory_utilization,
        gpu_lease_dir=args.gpu_lease_dir,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        num_kv_blocks=args.num_kv_blocks,
        block_size=args.block_size,
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
        enforce_eager=args.enforce_eager,
        max_cuda_graph_batch_size=args.max_cuda_graph_batch_size,
        enable_prefix_caching=args.enable_prefix_caching,
        host_cache_mb=args.host_cache_mb,
        adapter_disk_cache=args.adapter_disk_cache,
        adapter_disk_cache_mb=args.adapter_disk_cache_mb,
        adapter_disk_trust_s=args.adapter_disk_trust,
        heartbeat_interval_s=args.heartbeat_interval,
        kv_timeout_s=args.kv_timeout,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
    )
