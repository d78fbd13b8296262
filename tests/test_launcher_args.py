"""What ``loraplex up`` passes to its workers: every flag is one the worker parser accepts."""

from __future__ import annotations

from loraplex.tooling.up_flags import parse_up_args, worker_argv
from loraplex.worker.settings import build_parser, settings_from_args

COMMON = ["--nats-url", "nats://127.0.0.1:1", "--redis-url", "redis://127.0.0.1:2"]


def _worker_settings(up_flags: list[str]):
    argv = worker_argv(parse_up_args(up_flags), "/models/m", COMMON)
    return settings_from_args(build_parser("decode").parse_args(argv))


def test_defaults_reach_the_workers() -> None:
    s = _worker_settings([])
    assert s.model == "/models/m" and s.nats_url == "nats://127.0.0.1:1"
    assert s.max_num_seqs == 32 and s.max_loras == 8
    assert s.enable_prefix_caching and not s.enforce_eager
    assert s.max_model_len is None and s.num_kv_blocks is None


def test_engine_flags_are_forwarded() -> None:
    s = _worker_settings(
        [
            "--max-model-len", "4096", "--max-num-batched-tokens", "512", "--enforce-eager",
            "--no-enable-prefix-caching", "--num-kv-blocks", "77", "--device", "cpu",
            "--max-num-seqs", "5", "--dtype", "float16",
        ]
    )  # fmt: skip
    assert (s.max_model_len, s.max_num_batched_tokens, s.num_kv_blocks) == (4096, 512, 77)
    assert s.enforce_eager and not s.enable_prefix_caching
    assert (s.device, s.max_num_seqs, s.dtype) == ("cpu", 5, "float16")
