"""The ``loraplex`` command: ``demo-model``, ``generate`` (offline), ``env``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo_model(args: argparse.Namespace) -> int:
    from loraplex.tooling.demo import write_demo_model

    info = write_demo_model(Path(args.dir), num_adapters=args.adapters, seed=args.seed)
    print(f"wrote demo model to {info.model_dir}")
    for a in info.adapters:
        print(
            f"  adapter {a.name}: rank {a.rank}, alpha {a.alpha}, targets {','.join(a.target_modules)} -> {a.path}"
        )
    return 0


def _generate(args: argparse.Namespace) -> int:
    from loraplex import LLM, SamplingParams

    llm = LLM(
        args.model,
        dtype=args.dtype,
        device=args.device,
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
    )
    for spec in args.lora:
        name, _, path = spec.partition("=")
        if not path:
            print(f"--lora expects NAME=PATH, got {spec!r}", file=sys.stderr)
            return 2
        llm.add_lora(name, path)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    for out in llm.generate(args.prompt, params, lora=args.adapter):
        print(
            f"[{out.lora or 'base'}] {out.text!r} ({len(out.token_ids)} tokens, {out.finish_reason})"
        )
    return 0


def _env(_: argparse.Namespace) -> int:
    from loraplex import env

    print(env.describe())
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    """A key's tenants-file digest, read from stdin (never an argument: shell history)."""
    from loraplex.tenants import DIGEST_PREFIX, key_digest

    key = sys.stdin.readline().strip()
    if not key:
        print("error: give the key on standard input", file=sys.stderr)
        return 2
    print(DIGEST_PREFIX + key_digest(key).hex())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraplex", description="Multi-tenant LoRA serving.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "demo-model", help="write a tiny random Llama model, tokenizer and N LoRA adapters"
    )
    p.add_argument("dir", help="output directory")
    p.add_argument(
        "--adapters", type=int, default=4, help="number of PEFT adapters to write (default 4)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo_model)

    p = sub.add_parser("generate", help="offline generation with the in-process engine")
    p.add_argument("--model", required=True, help="Hugging Face model directory")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument(
        "--lora", action="append", default=[], metavar="NAME=PATH", help="register an adapter"
    )
    p.add_argument(
        "--adapter", default=None, help="adapter name to use for every prompt (default: base)"
    )
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)"
    )
    p.add_argument("--max-loras", type=int, default=8)
    p.add_argument("--max-lora-rank", type=int, default=64)
    p.set_defaults(func=_generate)

    from loraplex.tooling.launcher import up
    from loraplex.tooling.up_flags import build_parser as up_parser

    p = sub.add_parser("up", help="run the whole stack on this machine (NATS, Redis, services)")
    up_parser(p)
    p.set_defaults(func=up)

    p = sub.add_parser(
        "hash-key",
        help="print the sha256:<hex> digest of the API key on stdin, to put in a tenants file "
        "instead of the key",
    )
    p.set_defaults(func=_hash_key)

    from loraplex.tooling.run_batch import add_parser as add_run_batch

    add_run_batch(sub)

    p = sub.add_parser("env", help="list every LORAPLEX_* environment variable")
    p.set_defaults(func=_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from loraplex.errors import LoraplexError

    try:
        return int(args.func(args))
    except LoraplexError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
