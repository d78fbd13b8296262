"""``python -m loraplex.adapter_store``: the adapter registry over Redis (HTTP on port 8100)."""

from __future__ import annotations

import argparse
import sys

from loraplex import env
from loraplex.cli_help import DefaultsHelpFormatter
from loraplex.errors import LoraplexError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loraplex.adapter_store",
        formatter_class=DefaultsHelpFormatter,
        description="Register, validate, list and delete PEFT LoRA adapters (metadata and "
        "weights in Redis); publishes change events on NATS. Unset flags fall back to LORAPLEX_* "
        "environment variables (see `loraplex env`).",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8100, help="listen port (default 8100)")
    p.add_argument("--redis-url", default=None, help=f"Redis URL [{env.REDIS_URL.name}]")
    p.add_argument(
        "--nats-url", default=None, help=f"NATS URL for events; '' disables [{env.NATS_URL.name}]"
    )
    p.add_argument("--model", default=None, help=f"base model directory [{env.MODEL_DIR.name}]")
    p.add_argument(
        "--adapters-root",
        default=None,
        help=f"server-side path registrations allowed only below it [{env.ADAPTERS_ROOT.name}]",
    )
    p.add_argument("--max-lora-rank", type=int, default=None, help="largest rank (default 64)")
    p.add_argument(
        "--max-adapter-mb", type=float, default=None, help="upload size limit, MiB (default 512)"
    )
    p.add_argument(
        "--max-adapter-weight",
        type=float,
        default=None,
        help="largest |w| of an adapter's A and scaled B, refused beyond it (default 1000; "
        f"docs/architecture.md, Adapters) [{env.ADAPTER_MAX_ABS_WEIGHT.name}]",
    )
    p.add_argument(
        "--uploads-per-tenant",
        type=int,
        default=None,
        help=f"concurrent uploads per tenant, 429 beyond (default 2) [{env.UPLOADS_PER_TENANT.name}]",
    )
    p.add_argument(
        "--max-adapters-per-tenant",
        type=int,
        default=None,
        help="adapters one tenant may keep stored, 403 beyond; 0: no limit (default 256) "
        f"[{env.MAX_ADAPTERS_PER_TENANT.name}]",
    )
    p.add_argument(
        "--adapter-storage-per-tenant-mb",
        type=float,
        default=None,
        help="MiB of adapters one tenant may keep stored, 403 beyond; 0: no limit (default 8192) "
        f"[{env.ADAPTER_STORAGE_PER_TENANT_MB.name}]",
    )
    p.add_argument(
        "--upload-dir",
        default=None,
        help=f"where uploads are spooled (default: the system temp dir) [{env.UPLOAD_DIR.name}]",
    )
    p.add_argument(
        "--tenants", default=None, help=f"tenants file, JSON/YAML [{env.TENANTS_FILE.name}]"
    )
    p.add_argument("--redis-prefix", default=None, help="prefix of Redis keys (default loraplex)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env.configure_logging()
    import uvicorn

    from loraplex.adapter_store.app import create_app
    from loraplex.adapter_store.settings import Settings

    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            redis_url=args.redis_url,
            nats_url=args.nats_url,
            model_dir=args.model,
            adapters_root=args.adapters_root,
            max_lora_rank=args.max_lora_rank,
            max_adapter_mb=args.max_adapter_mb,
            max_adapter_weight=args.max_adapter_weight,
            uploads_per_tenant=args.uploads_per_tenant,
            max_adapters_per_tenant=args.max_adapters_per_tenant,
            adapter_storage_per_tenant_mb=args.adapter_storage_per_tenant_mb,
            upload_dir=args.upload_dir,
            tenants_file=args.tenants,
            redis_prefix=args.redis_prefix,
        )
        app = create_app(settings)
    except (ValueError, LoraplexError) as e:
        print(f"adapter-store: {e}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port, timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
