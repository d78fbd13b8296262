"""``python -m loraplex.gateway``: the OpenAI-compatible HTTP gateway (port 8000)."""

from __future__ import annotations

import argparse
import sys

from loraplex import env
from loraplex.cli_flags import add_flags
from loraplex.cli_help import DefaultsHelpFormatter
from loraplex.errors import LoraplexError
from loraplex.gateway.batches.limits import flags as batch_flags
from loraplex.gateway.settings import GatewaySettings, flags
from loraplex.gc_heap import freeze_startup_heap


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loraplex.gateway",
        formatter_class=DefaultsHelpFormatter,
        description="OpenAI-compatible REST gateway: /v1/completions, /v1/chat/completions (SSE "
        "streaming), /v1/models, /v1/adapters; submits requests to the scheduler over NATS. "
        "Unset flags fall back to LORAPLEX_* environment variables (see `loraplex env`).",
    )
    return add_flags(p, flags())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env.configure_logging()
    import uvicorn

    from loraplex.gateway.app import create_app
    from loraplex.gateway.header_timeout import TimedH11Protocol

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
            prefix_cache_scope=args.prefix_cache_scope,
            tool_call_parser=args.tool_call_parser,
            reasoning_parser=args.reasoning_parser,
            exclude_tools_when_tool_choice_none=args.exclude_tools_when_tool_choice_none,
            responses_ttl_s=args.responses_ttl,
            responses_max_kb=args.responses_max_kb,
            responses_per_tenant=args.responses_per_tenant,
            responses_tenant_mb=args.responses_tenant_mb,
            **{f.dest: getattr(args, f.dest) for f in batch_flags()},
        )
        app = create_app(settings)
    except (ValueError, LoraplexError) as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 2
    # The app, its tokenizer and the modules: out of every later full collection.  Here, not in
    # the app's lifespan, so that a test serving the app in-process freezes nothing.
    freeze_startup_heap()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=30,
        # reports clients that left at once (gateway/peer.py); drops connections whose
        # request headers are late (gateway/header_timeout.py)
        http=TimedH11Protocol,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
