"""``python -m loraplex.gateway``: the OpenAI-compatible HTTP gateway (port 8000)."""

from __future__ import annotations

import argparse
import sys

from loraplex import env
from loraplex.cli_help import DefaultsHelpFormatter
from loraplex.errors import LoraplexError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loraplex.gateway",
        formatter_class=DefaultsHelpFormatter,
        description="OpenAI-compatible REST gateway: /v1/completions, /v1/chat/completions (SSE "
        "streaming), /v1/models, /v1/adapters; submits requests to the scheduler over NATS. "
        "Unset flags fall back to LORAPLEX_* environment variables (see `loraplex env`).",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="listen address (default 127.0.0.1; a non-loopback address needs --tenants)",
    )
    p.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    p.add_argument(
        "--metrics-host",
        default=None,
        help=f"address of the Prometheus /metrics listener [{env.GATEWAY_METRICS_HOST.name}]",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of the /metrics listener; per-tenant series are served only there, not on "
        f"--port; 0: none (default 8002) [{env.GATEWAY_METRICS_PORT.name}]",
    )
    p.add_argument("--nats-url", default=None, help=f"NATS URL [{env.NATS_URL.name}]")
    p.add_argument(
        "--redis-url", default=None, help=f"Redis of the adapter store [{env.REDIS_URL.name}]"
    )
    p.add_argument("--model", default=None, help=f"base model directory [{env.MODEL_DIR.name}]")
    p.add_argument(
        "--model-id",
        default=None,
        help=f"served model name (default: the model dir's basename) [{env.MODEL_ID.name}]",
    )
    p.add_argument(
        "--tenants",
        default=None,
        help=f"tenants file, JSON/YAML; without it: open mode, loopback only [{env.TENANTS_FILE.name}]",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        help=f"seconds a request may go without any answer before 504 [{env.GATEWAY_REQUEST_TIMEOUT_S.name}]",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help=f"context limit (default: the model's max_position_embeddings) [{env.MAX_MODEL_LEN.name}]",
    )
    p.add_argument(
        "--redis-prefix", default=None, help=f"prefix of Redis keys [{env.REDIS_PREFIX.name}]"
    )
    p.add_argument(
        "--max-lora-rank",
        type=int,
        default=None,
        help=f"largest adapter rank accepted by POST /v1/adapters [{env.MAX_LORA_RANK.name}]",
    )
    p.add_argument(
        "--adapters-root",
        default=None,
        help=f"allow server-side path registrations below it [{env.ADAPTERS_ROOT.name}]",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env.configure_logging()
    import uvicorn

    from loraplex.gateway.app import create_app
    from loraplex.gateway.peer import GatewayH11Protocol
    from loraplex.gateway.settings import GatewaySettings

    try:
        settings = GatewaySettings.from_env(
            host=args.host,
            port=args.port,
            metrics_host=args.metrics_host,
            metrics_port=args.metrics_port,
            nats_url=args.nats_url,
            redis_url=args.redis_url,
            model_dir=args.model,
            model_id=args.model_id,
            tenants_file=args.tenants,
            request_timeout_s=args.request_timeout,
            max_model_len=args.max_model_len,
            redis_prefix=args.redis_prefix,
            max_lora_rank=args.max_lora_rank,
            adapters_root=args.adapters_root,
        )
        app = create_app(settings)
    except (ValueError, LoraplexError) as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=30,
        http=GatewayH11Protocol,  # reports clients that left at once (gateway/peer.py)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
