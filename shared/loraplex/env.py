"""The one registry of ``LORAPLEX_*`` environment variables.

Every variable the code reads is declared here with its type, default and meaning; nothing else in
the package calls ``os.environ`` for configuration.  ``loraplex env`` prints the table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class EnvVar(Generic[T]):
    name: str
    default: T
    help: str

    def get(self) -> T:
        raw = os.environ.get(self.name)
        if raw is None or raw == "":
            return self.default
        kind = type(self.default)
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")  # type: ignore[return-value]
        return kind(raw)  # type: ignore[call-arg]


DISABLE_TRITON = EnvVar("LORAPLEX_DISABLE_TRITON", False, "use the torch twins even on CUDA")
TRITON_ON_CPU = EnvVar(
    "LORAPLEX_TRITON_ON_CPU", False, "run Triton kernels on CPU (needs TRITON_INTERPRET=1; tests)"
)
LORA_KERNEL = EnvVar(
    "LORAPLEX_LORA_KERNEL",
    "v1",
    "Triton multi-LoRA kernels: v1 (per-row BGMV) or v2 (rows grouped by adapter, split-K)",
)
LORA_AUTOTUNE = EnvVar(
    "LORAPLEX_LORA_AUTOTUNE", True, "v2 LoRA kernels: time block sizes per shape at warm-up (CUDA)"
)
LOG_LEVEL = EnvVar("LORAPLEX_LOG_LEVEL", "INFO", "logging level of every service")
BLOCK_SIZE = EnvVar("LORAPLEX_BLOCK_SIZE", 16, "tokens per KV-cache block")
KV_CACHE_MEMORY = EnvVar(
    "LORAPLEX_KV_CACHE_MEMORY_MB", 0, "KV-cache size in MiB (0: derive from --num-kv-blocks)"
)
DEVICE = EnvVar(
    "LORAPLEX_DEVICE", "", "workers' --device: cpu, cuda, cuda:N, auto (empty: cuda when available)"
)
GPU_MEMORY_UTILIZATION = EnvVar(
    "LORAPLEX_GPU_MEMORY_UTILIZATION",
    0.9,
    "workers' --gpu-memory-utilization: share of the GPU's total memory (weights + K/V)",
)
GPU_LEASE_DIR = EnvVar(
    "LORAPLEX_GPU_LEASE_DIR",
    "/tmp/loraplex-gpu-leases",
    "workers' --device auto: one flock'd file per GPU (share it between a host's workers)",
)
WARMUP = EnvVar(
    "LORAPLEX_WARMUP",
    "full",
    "workers on CUDA compile every batch shape at start-up: full, light (fewer shapes), off",
)
GRAMMAR_BUDGET_MS = EnvVar(
    "LORAPLEX_GRAMMAR_BUDGET_MS",
    200.0,
    "workers: the longest one structured-output request's grammar may take to mask or advance "
    "one token (and a tenth of it on average); a request over it ends with a 400 and the step "
    "goes on without it",
)
GRAMMAR_COMPILE_S = EnvVar(
    "LORAPLEX_GRAMMAR_COMPILE_S",
    5.0,
    "workers: the longest a request's output constraint may take to compile; over it, a 400",
)
FORK_SERVER = EnvVar(
    "LORAPLEX_FORK_SERVER",
    True,
    "loraplex up: start services as forks of one server that imported torch and FastAPI once "
    "(faster starts and restarts); off: exec each one",
)

NATS_URL = EnvVar(
    "LORAPLEX_NATS_URL",
    "nats://127.0.0.1:4222",
    "NATS server(s) every service connects to: one URL, or a cluster's URLs comma-separated",
)
REDIS_URL = EnvVar(
    "LORAPLEX_REDIS_URL",
    "",
    "Redis: redis://host:port/db or redis+sentinel://host:port,host:port/master[/db] (empty: none)",
)
REDIS_RETRY_S = EnvVar(
    "LORAPLEX_REDIS_RETRY_S",
    5.0,
    "how long a Redis command retries a lost connection (a failover, a restart) before failing",
)

# adapter store (also read by the gateway and workers where they share a setting)
TENANTS_FILE = EnvVar(
    "LORAPLEX_TENANTS", "", "tenants file (JSON/YAML); empty: open mode, one tenant"
)
TENANTS_RELOAD_S = EnvVar(
    "LORAPLEX_TENANTS_RELOAD_S",
    5.0,
    "gateway, adapter store, scheduler: seconds between looks at the tenants file; a changed "
    "file is read again (new tenants, keys, weights) without a restart; 0: never",
)
MODEL_DIR = EnvVar("LORAPLEX_MODEL", "", "base model directory (Hugging Face layout)")
ADAPTERS_ROOT = EnvVar(
    "LORAPLEX_ADAPTERS_ROOT", "", "adapter-store: only server-side path registrations under it"
)
MAX_LORA_RANK = EnvVar("LORAPLEX_MAX_LORA_RANK", 64, "largest LoRA rank accepted and served")
MAX_ADAPTER_MB = EnvVar("LORAPLEX_MAX_ADAPTER_MB", 512.0, "adapter-store: upload size limit (MiB)")
ADAPTER_MAX_ABS_WEIGHT = EnvVar(
    "LORAPLEX_ADAPTER_MAX_ABS_WEIGHT",
    1000.0,
    "largest |w| of an adapter's A and scaled B accepted (store, gateway, workers); inf: no bound",
)
UPLOADS_PER_TENANT = EnvVar(
    "LORAPLEX_UPLOADS_PER_TENANT", 2, "adapter-store: concurrent uploads per tenant (then 429)"
)
MAX_ADAPTERS_PER_TENANT = EnvVar(
    "LORAPLEX_MAX_ADAPTERS_PER_TENANT",
    256,
    "adapter-store: adapters one tenant may keep stored (then 403; 0: no limit)",
)
ADAPTER_STORAGE_PER_TENANT_MB = EnvVar(
    "LORAPLEX_ADAPTER_STORAGE_PER_TENANT_MB",
    8192.0,
    "adapter-store: MiB of adapters one tenant may keep stored (then 403; 0: no limit)",
)
UPLOAD_DIR = EnvVar(
    "LORAPLEX_UPLOAD_DIR", "", "adapter-store: where uploads are spooled (empty: system temp dir)"
)
REDIS_PREFIX = EnvVar("LORAPLEX_REDIS_PREFIX", "loraplex", "prefix of every Redis key")
ADAPTER_STORE_URL = EnvVar(
    "LORAPLEX_ADAPTER_STORE_URL", "http://127.0.0.1:8100", "adapter-store HTTP base URL"
)

# gateway
MODEL_ID = EnvVar(
    "LORAPLEX_MODEL_ID", "", "served name of the base model (empty: model dir's basename)"
)
MAX_MODEL_LEN = EnvVar(
    "LORAPLEX_MAX_MODEL_LEN", 0, "context limit, prompt + completion (0: max_position_embeddings)"
)
GATEWAY_REQUEST_TIMEOUT_S = EnvVar(
    "LORAPLEX_GATEWAY_REQUEST_TIMEOUT_S", 120.0, "gateway: longest silence of a request before 504"
)
GATEWAY_SUBMIT_TIMEOUT_S = EnvVar(
    "LORAPLEX_GATEWAY_SUBMIT_TIMEOUT_S",
    5.0,
    "gateway: wait for the scheduler's SUBMIT reply (then 503)",
)
GATEWAY_ADAPTER_STALE_S = EnvVar(
    "LORAPLEX_GATEWAY_ADAPTER_STALE_S",
    600.0,
    "gateway: while Redis is unreachable, keep serving an adapter name a tenant resolved within "
    "this many seconds (0: never)",
)
GATEWAY_METRICS_HOST = EnvVar(
    "LORAPLEX_GATEWAY_METRICS_HOST", "127.0.0.1", "gateway: address of the /metrics listener"
)
GATEWAY_METRICS_PORT = EnvVar(
    "LORAPLEX_GATEWAY_METRICS_PORT",
    8002,
    "gateway: port of the /metrics listener (per-tenant series; not on the API port); 0: none",
)
SCHEDULER_METRICS_HOST = EnvVar(
    "LORAPLEX_SCHEDULER_METRICS_HOST",
    "127.0.0.1",
    "scheduler: address of its /health, /ready, /metrics listener",
)
SCHEDULER_METRICS_PORT = EnvVar(
    "LORAPLEX_SCHEDULER_METRICS_PORT",
    8003,
    "scheduler: port of its /health, /ready, /metrics listener (per-tenant series); 0: none",
)
WORKER_METRICS_HOST = EnvVar(
    "LORAPLEX_WORKER_METRICS_HOST",
    "127.0.0.1",
    "prefill/decode workers: address of the /health, /ready, /metrics listener",
)
WORKER_METRICS_PORT = EnvVar(
    "LORAPLEX_WORKER_METRICS_PORT",
    8004,
    "prefill/decode workers: port of the /health, /ready, /metrics listener; 0: none",
)
GATEWAY_MAX_BODY_MB = EnvVar(
    "LORAPLEX_GATEWAY_MAX_BODY_MB", 4.0, "gateway: JSON request body limit in MiB (then 413)"
)
GATEWAY_HEADER_TIMEOUT_S = EnvVar(
    "LORAPLEX_GATEWAY_HEADER_TIMEOUT_S",
    20.0,
    "gateway: seconds a connection has to send a request's complete headers (from when it opens "
    "or the previous answer ends); then 408 and closed (idle: closed); 0: no limit",
)
GATEWAY_BODY_TIMEOUT_S = EnvVar(
    "LORAPLEX_GATEWAY_BODY_TIMEOUT_S",
    30.0,
    "gateway: longest a request body may stall (no bytes), and its time before the min rate "
    "counts; then 408 and closed; 0: no limit",
)
GATEWAY_BODY_MIN_RATE = EnvVar(
    "LORAPLEX_GATEWAY_BODY_MIN_RATE",
    1024,
    "gateway: bytes/s a request body must keep up on average after its first "
    "LORAPLEX_GATEWAY_BODY_TIMEOUT_S (a trickle ends with 408); 0: no minimum",
)
GATEWAY_FILE_UPLOADS_PER_TENANT = EnvVar(
    "LORAPLEX_GATEWAY_FILE_UPLOADS_PER_TENANT",
    2,
    "gateway: concurrent POST /v1/files uploads per tenant in this process (then 429)",
)
GATEWAY_STREAM_BUFFER_MB = EnvVar(
    "LORAPLEX_GATEWAY_STREAM_BUFFER_MB",
    64.0,
    "gateway: MiB of generated tokens one tenant's clients may leave unread (slow or stalled "
    "streams); past it the tenant's request with the most unread fails (429) and is cancelled; "
    "0: no limit",
)
GATEWAY_MAX_ANSWER_MB = EnvVar(
    "LORAPLEX_GATEWAY_MAX_ANSWER_MB",
    32.0,
    "gateway: MiB an answer may take at most, estimated before any work from its choices, "
    "tokens and logprobs (a stream's own tokens go out as they come and do not count); over it a "
    "400; 0: no limit",
)
GATEWAY_MAX_BATCH_CHOICES = EnvVar(
    "LORAPLEX_GATEWAY_MAX_BATCH_CHOICES",
    256,
    "gateway: prompts x n of one /v1/completions request, each its own scheduled request (400 beyond)",
)

PREFIX_CACHE_SCOPE = EnvVar(
    "LORAPLEX_PREFIX_CACHE_SCOPE",
    "tenant",
    "gateway: which requests may reuse each other's cached prompt prefixes: 'tenant' (only the "
    "same tenant's: no tenant can time or count another's prompts) or 'shared' (any, per adapter)",
)

TOOL_CALL_PARSER = EnvVar(
    "LORAPLEX_TOOL_CALL_PARSER",
    "hermes",
    "gateway: how chat answers are read for tool calls under tool_choice 'auto': 'hermes' "
    "(<tool_call> JSON blocks: Qwen 2.5/3, Hermes, the demo model) or 'none' ('auto' is then a 400)",
)

REASONING_PARSER = EnvVar(
    "LORAPLEX_REASONING_PARSER",
    "none",
    "gateway: how chat answers' thinking is read into message.reasoning: 'none', 'deepseek_r1' "
    "(the answer starts thinking, until </think>) or 'qwen3' (when it opens with <think>)",
)

BATCH_FILE_MAX_MB = EnvVar(
    "LORAPLEX_BATCH_FILE_MAX_MB", 64.0, "gateway: largest file uploaded to /v1/files (MiB)"
)
BATCH_FILES_TENANT_MB = EnvVar(
    "LORAPLEX_BATCH_FILES_TENANT_MB", 512.0, "gateway: MiB of files (outputs too) per tenant"
)
BATCH_FILES_PER_TENANT = EnvVar(
    "LORAPLEX_BATCH_FILES_PER_TENANT", 200, "gateway: files (outputs too) kept per tenant"
)
BATCH_MAX_LINES = EnvVar("LORAPLEX_BATCH_MAX_LINES", 10_000, "gateway: requests in one batch")
BATCHES_PER_TENANT = EnvVar(
    "LORAPLEX_BATCHES_PER_TENANT", 4, "gateway: batches one tenant may run at once (then 429)"
)
BATCH_CONCURRENCY = EnvVar(
    "LORAPLEX_BATCH_CONCURRENCY", 16, "gateway: requests of one batch in flight at once"
)
BATCH_RESULT_MAX_MB = EnvVar(
    "LORAPLEX_BATCH_RESULT_MAX_MB",
    32.0,
    "gateway: largest answer one batch line may keep (MiB); a larger one is that line's error",
)
BATCHES_KEPT_PER_TENANT = EnvVar(
    "LORAPLEX_BATCHES_KEPT_PER_TENANT",
    2000,
    "gateway: batches (any status) one tenant may keep until they expire (then 429)",
)
RESPONSES_TTL_S = EnvVar(
    "LORAPLEX_RESPONSES_TTL_S",
    3600,
    "gateway: seconds a Responses API answer is kept for previous_response_id, GET and "
    "input_items (in Redis when the gateway has one, else in its memory); 0: none are kept",
)
RESPONSES_MAX_KB = EnvVar(
    "LORAPLEX_RESPONSES_MAX_KB",
    1024,
    "gateway: largest kept response, with its conversation, in KiB (larger: answered store false)",
)
RESPONSES_PER_TENANT = EnvVar(
    "LORAPLEX_RESPONSES_PER_TENANT",
    256,
    "gateway: responses kept per tenant; past it the tenant's oldest is dropped",
)
RESPONSES_TENANT_MB = EnvVar(
    "LORAPLEX_RESPONSES_TENANT_MB",
    64.0,
    "gateway: MiB of kept responses per tenant; past it the tenant's oldest are dropped",
)

EXCLUDE_TOOLS_WHEN_NONE = EnvVar(
    "LORAPLEX_EXCLUDE_TOOLS_WHEN_TOOL_CHOICE_NONE",
    False,
    "gateway: with tool_choice 'none', leave the tools out of the chat template (vLLM's flag)",
)

NATIVE = EnvVar(
    "LORAPLEX_NATIVE",
    "auto",
    "scheduler: 'auto' runs its hot modules compiled (mypyc, `python -m loraplex.tooling.build_native`)"
    " when built for these sources, 'off' always interpreted",
)

REGISTRY: tuple[EnvVar, ...] = (
    DISABLE_TRITON,
    TRITON_ON_CPU,
    LORA_KERNEL,
    LORA_AUTOTUNE,
    LOG_LEVEL,
    BLOCK_SIZE,
    KV_CACHE_MEMORY,
    DEVICE,
    GPU_MEMORY_UTILIZATION,
    GPU_LEASE_DIR,
    WARMUP,
    NATS_URL,
    REDIS_URL,
    REDIS_RETRY_S,
    TENANTS_FILE,
    TENANTS_RELOAD_S,
    MODEL_DIR,
    ADAPTERS_ROOT,
    MAX_LORA_RANK,
    MAX_ADAPTER_MB,
    ADAPTER_MAX_ABS_WEIGHT,
    UPLOADS_PER_TENANT,
    MAX_ADAPTERS_PER_TENANT,
    ADAPTER_STORAGE_PER_TENANT_MB,
    UPLOAD_DIR,
    REDIS_PREFIX,
    ADAPTER_STORE_URL,
    MODEL_ID,
    MAX_MODEL_LEN,
    GATEWAY_REQUEST_TIMEOUT_S,
    GATEWAY_SUBMIT_TIMEOUT_S,
    GATEWAY_ADAPTER_STALE_S,
    GATEWAY_MAX_BODY_MB,
    GATEWAY_HEADER_TIMEOUT_S,
    GATEWAY_BODY_TIMEOUT_S,
    GATEWAY_BODY_MIN_RATE,
    GATEWAY_FILE_UPLOADS_PER_TENANT,
    GATEWAY_STREAM_BUFFER_MB,
    GATEWAY_MAX_ANSWER_MB,
    GATEWAY_MAX_BATCH_CHOICES,
    GATEWAY_METRICS_HOST,
    GATEWAY_METRICS_PORT,
    PREFIX_CACHE_SCOPE,
    TOOL_CALL_PARSER,
    REASONING_PARSER,
    EXCLUDE_TOOLS_WHEN_NONE,
    BATCH_FILE_MAX_MB,
    BATCH_FILES_TENANT_MB,
    BATCH_FILES_PER_TENANT,
    BATCH_MAX_LINES,
    BATCHES_PER_TENANT,
    BATCH_CONCURRENCY,
    BATCH_RESULT_MAX_MB,
    BATCHES_KEPT_PER_TENANT,
    RESPONSES_TTL_S,
    RESPONSES_MAX_KB,
    RESPONSES_PER_TENANT,
    RESPONSES_TENANT_MB,
    SCHEDULER_METRICS_HOST,
    SCHEDULER_METRICS_PORT,
    WORKER_METRICS_HOST,
    WORKER_METRICS_PORT,
    NATIVE,
)


def describe() -> str:
    """A table of every variable, its default and current value (for ``loraplex env``)."""
    rows = [f"{v.name:<32} default={v.default!r:<8} now={v.get()!r:<8} {v.help}" for v in REGISTRY]
    return "\n".join(rows)


def configure_logging() -> None:
    """Every service logs the same way, at ``LORAPLEX_LOG_LEVEL``."""
    import logging

    logging.basicConfig(
        level=LOG_LEVEL.get().upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
