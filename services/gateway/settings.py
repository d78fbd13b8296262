"""The gateway's one settings object: flags over ``LORAPLEX_*`` environment defaults."""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from loraplex import env
from loraplex.cli_flags import Flag, flag
from loraplex.gateway.batches import limits as batch_limits
from loraplex.gateway.batches.limits import BatchLimits
from loraplex.gateway.reasoning import PARSERS as REASONING_PARSERS
from loraplex.gateway.tools import PARSERS as TOOL_CALL_PARSERS
from loraplex.model.config import ModelConfig

LOOPBACK_NAMES = ("localhost",)
PREFIX_CACHE_SCOPES = ("tenant", "shared")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway process needs; immutable once built.

    ``max_model_len`` is the context (prompt + completion) a request may use; 0 means "the model's
    ``max_position_embeddings``" and is resolved by ``from_env``.  ``request_timeout_s`` bounds the
    silence of one request: if nothing (token or error) arrives for it within that time, the client
    gets a 504 and the request is cancelled.  Per-tenant queue limits belong to the scheduler.
    """

    model_dir: str
    model_id: str
    max_model_len: int
    nats_url: str = "nats://127.0.0.1:4222"
    redis_url: str = ""  # empty: no adapter store (only the base model is served)
    redis_prefix: str = "loraplex"
    tenants_file: str | None = None  # None: open mode (one tenant "default", loopback only)
    host: str = "127.0.0.1"
    port: int = 8000
    request_timeout_s: float = 120.0
    submit_timeout_s: float = 5.0  # scheduler's answer to SUBMIT; past it: 503
    # While Redis is unreachable, an adapter name a tenant resolved this recently still serves
    # (``known_adapters.py``); 0: never.
    adapter_stale_s: float = 600.0
    max_body_bytes: int = 4 * 1024 * 1024
    # MiB of tokens one tenant's clients may leave unread (streams.py); 0: no limit
    stream_buffer_mb: float = 64.0
    max_answer_mb: float = 32.0  # an answer's estimated size over it: a 400 (answer_size.py)
    # adapter routes (the adapter-store's logic, run inside the gateway)
    max_adapter_mb: float = 512.0
    max_lora_rank: int = 64
    adapters_root: str | None = None  # server-side path registrations only below it; None: off
    # /metrics on its own listener (it names tenants); 0: none.  Its env default is 8002.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # Which requests may reuse each other's cached prompt prefixes (workers' K/V, the scheduler's
    # routing): "tenant" (the same tenant's only) or "shared" (anyone's, per adapter).  Sharing
    # lets a tenant learn from its time to first token, or from usage's cached_tokens, whether
    # another tenant sent a prompt: vLLM's cache_salt, set by the platform.
    prefix_cache_scope: str = "tenant"
    # How chat answers are read for tool calls under tool_choice "auto" (tool_calls.py).
    tool_call_parser: str = "hermes"
    # How chat answers' thinking is read into message.reasoning (reasoning.py); "none": not read.
    reasoning_parser: str = "none"
    # tool_choice "none": leave the tools out of the chat template (vLLM's flag; default: shown)
    exclude_tools_when_tool_choice_none: bool = False
    # The Responses API's kept answers (response_store.py): lifetime (0: none kept), size, count.
    responses_ttl_s: int = 3600
    responses_max_kb: int = 1024
    responses_per_tenant: int = 256
    responses_tenant_mb: float = 64.0
    # The Files and Batch APIs' limits (batches/limits.py; its own flags)
    batches: BatchLimits = field(default_factory=BatchLimits)
    gateway_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    def __post_init__(self) -> None:
        if not self.model_dir:
            raise ValueError("a base model directory is required (--model or LORAPLEX_MODEL)")
        if not self.model_id:
            raise ValueError("the served model id must not be empty")
        if self.max_model_len < 1:
            raise ValueError("max_model_len must be positive")
        if not self.request_timeout_s > 0 or not self.submit_timeout_s > 0:
            raise ValueError("timeouts must be positive")
        if not self.adapter_stale_s >= 0:
            raise ValueError("adapter_stale_s must be 0 or more")
        if self.responses_ttl_s < 0 or self.responses_max_kb < 1 or self.responses_per_tenant < 1:
            raise ValueError(
                "responses: the TTL must be 0 or more, the size and count limits positive"
            )
        if not self.responses_tenant_mb * 1024 >= self.responses_max_kb:
            raise ValueError("responses: a tenant's budget must hold at least one kept response")
        if self.max_body_bytes < 1024:
            raise ValueError("the body size limit must be at least 1 KiB")
        if not 0 <= self.port < 65536:
            raise ValueError(f"invalid port {self.port}")
        if not 0 <= self.metrics_port < 65536:
            raise ValueError(f"invalid metrics port {self.metrics_port}")
        if self.prefix_cache_scope not in PREFIX_CACHE_SCOPES:
            raise ValueError(
                f"prefix cache scope must be one of {PREFIX_CACHE_SCOPES}, "
                f"got {self.prefix_cache_scope!r}"
            )
        if self.tool_call_parser not in TOOL_CALL_PARSERS:
            raise ValueError(
                f"tool call parser must be one of {TOOL_CALL_PARSERS}, "
                f"got {self.tool_call_parser!r}"
            )
        if self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(
                f"reasoning parser must be one of {REASONING_PARSERS}, "
                f"got {self.reasoning_parser!r}"
            )
        if self.tenants_file is None and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host!r} without --tenants: open single-tenant mode "
                "(no API keys) is for loopback addresses only"
            )

    @property
    def open_mode(self) -> bool:
        return self.tenants_file is None

    @classmethod
    def from_env(cls, **overrides: object) -> GatewaySettings:
        """Defaults from the environment registry; ``overrides`` (flags) that are not None win."""
        batch_flags = {f.dest: overrides.pop(f.dest, None) for f in batch_limits.flags()}
        base: dict[str, object] = {
            "batches": BatchLimits.from_env(**batch_flags),
            "model_dir": env.MODEL_DIR.get(),
            "model_id": env.MODEL_ID.get(),
            "max_model_len": env.MAX_MODEL_LEN.get(),
            "nats_url": env.NATS_URL.get(),
            "redis_url": env.REDIS_URL.get(),
            "redis_prefix": env.REDIS_PREFIX.get(),
            "tenants_file": env.TENANTS_FILE.get(),
            "request_timeout_s": env.GATEWAY_REQUEST_TIMEOUT_S.get(),
            "submit_timeout_s": env.GATEWAY_SUBMIT_TIMEOUT_S.get(),
            "adapter_stale_s": env.GATEWAY_ADAPTER_STALE_S.get(),
            "max_body_bytes": int(env.GATEWAY_MAX_BODY_MB.get() * 1024 * 1024),
            "stream_buffer_mb": env.GATEWAY_STREAM_BUFFER_MB.get(),
            "max_answer_mb": env.GATEWAY_MAX_ANSWER_MB.get(),
            "max_adapter_mb": env.MAX_ADAPTER_MB.get(),
            "max_lora_rank": env.MAX_LORA_RANK.get(),
            "adapters_root": env.ADAPTERS_ROOT.get(),
            "metrics_host": env.GATEWAY_METRICS_HOST.get(),
            "metrics_port": env.GATEWAY_METRICS_PORT.get(),
            "prefix_cache_scope": env.PREFIX_CACHE_SCOPE.get(),
            "tool_call_parser": env.TOOL_CALL_PARSER.get(),
            "reasoning_parser": env.REASONING_PARSER.get(),
            "exclude_tools_when_tool_choice_none": env.EXCLUDE_TOOLS_WHEN_NONE.get(),
            "responses_ttl_s": env.RESPONSES_TTL_S.get(),
            "responses_max_kb": env.RESPONSES_MAX_KB.get(),
            "responses_per_tenant": env.RESPONSES_PER_TENANT.get(),
            "responses_tenant_mb": env.RESPONSES_TENANT_MB.get(),
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        for optional in ("tenants_file", "adapters_root"):
            base[optional] = base[optional] or None
        model_dir = str(base["model_dir"] or "")
        if model_dir:
            if not base["model_id"]:
                base["model_id"] = Path(model_dir).resolve().name
            if not base["max_model_len"]:
                # the workers' default (ModelConfig.default_max_model_len): longer requests get a
                # 400 here instead of failing at a worker
                base["max_model_len"] = ModelConfig.from_dir(model_dir).default_max_model_len
        return cls(**base)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> GatewaySettings:
        return replace(self, **changes)  # type: ignore[arg-type]


def flags() -> tuple[Flag, ...]:
    """The gateway's flags (``loraplex up`` reuses some); unset ones fall back to ``from_env``."""
    return (
        flag(
            "--host",
            default="127.0.0.1",
            help="listen address (default 127.0.0.1; a non-loopback address needs --tenants)",
        ),
        flag("--port", type=int, default=8000, help="listen port (default 8000)"),
        flag(
            "--metrics-host",
            default=None,
            help=f"address of the Prometheus /metrics listener [{env.GATEWAY_METRICS_HOST.name}]",
        ),
        flag(
            "--metrics-port",
            type=int,
            default=None,
            help="port of the /metrics listener; per-tenant series are served only there, not on "
            f"--port; 0: none (default 8002) [{env.GATEWAY_METRICS_PORT.name}]",
        ),
        flag("--nats-url", default=None, help=f"NATS URL [{env.NATS_URL.name}]"),
        flag(
            "--redis-url", default=None, help=f"Redis of the adapter store [{env.REDIS_URL.name}]"
        ),
        flag("--model", default=None, help=f"base model directory [{env.MODEL_DIR.name}]"),
        flag(
            "--model-id",
            default=None,
            help=f"served model name (default: the model dir's basename) [{env.MODEL_ID.name}]",
        ),
        flag(
            "--tenants",
            default=None,
            help=f"tenants file, JSON/YAML; without it: open mode, loopback only [{env.TENANTS_FILE.name}]",
        ),
        flag(
            "--request-timeout",
            type=float,
            default=None,
            help=f"seconds a request may go without any answer before 504 [{env.GATEWAY_REQUEST_TIMEOUT_S.name}]",
        ),
        flag(
            "--max-model-len",
            type=int,
            default=None,
            help=f"context limit (default: the model's max_position_embeddings, at most 8192, as workers) [{env.MAX_MODEL_LEN.name}]",
        ),
        flag(
            "--redis-prefix", default=None, help=f"prefix of Redis keys [{env.REDIS_PREFIX.name}]"
        ),
        flag(
            "--max-lora-rank",
            type=int,
            default=None,
            help=f"largest adapter rank accepted by POST /v1/adapters [{env.MAX_LORA_RANK.name}]",
        ),
        flag(
            "--adapters-root",
            default=None,
            help=f"allow server-side path registrations below it [{env.ADAPTERS_ROOT.name}]",
        ),
        flag(
            "--prefix-cache-scope",
            default=None,
            choices=PREFIX_CACHE_SCOPES,
            help="whose cached prompt prefixes a request may reuse: the same tenant's (default) "
            f"or anyone's (shared) [{env.PREFIX_CACHE_SCOPE.name}]",
        ),
        flag(
            "--tool-call-parser",
            default=None,
            choices=TOOL_CALL_PARSERS,
            help="how chat answers are read for tool calls under tool_choice auto: hermes "
            "(<tool_call> blocks, default) or none (auto is then a 400; required and named "
            f"functions still work) [{env.TOOL_CALL_PARSER.name}]",
        ),
        flag(
            "--reasoning-parser",
            default=None,
            choices=REASONING_PARSERS,
            help="read chat answers' <think> part into message.reasoning: deepseek_r1 (the "
            "answer starts thinking) or qwen3 (when it opens with <think>); default none "
            f"[{env.REASONING_PARSER.name}]",
        ),
        flag(
            "--exclude-tools-when-tool-choice-none",
            action="store_true",
            default=None,
            help='with tool_choice "none", leave the tools out of the chat template (default: '
            f"they are shown, as in vLLM) [{env.EXCLUDE_TOOLS_WHEN_NONE.name}]",
        ),
        flag(
            "--responses-ttl",
            type=int,
            default=None,
            help="seconds a Responses API answer is kept for previous_response_id (in Redis with "
            f"--redis-url, else in this gateway's memory); 0: none (default 3600) "
            f"[{env.RESPONSES_TTL_S.name}]",
        ),
        flag(
            "--responses-max-kb",
            type=int,
            default=None,
            help="largest kept response with its conversation, KiB (default 1024) "
            f"[{env.RESPONSES_MAX_KB.name}]",
        ),
        flag(
            "--responses-per-tenant",
            type=int,
            default=None,
            help="responses kept per tenant, its oldest dropped past it (default 256) "
            f"[{env.RESPONSES_PER_TENANT.name}]",
        ),
        flag(
            "--responses-tenant-mb",
            type=float,
            default=None,
            help="MiB of kept responses per tenant, its oldest dropped past it (default 64) "
            f"[{env.RESPONSES_TENANT_MB.name}]",
        ),
        *batch_limits.flags(),
    )
