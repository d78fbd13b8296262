"""Real stacks: `loraplex up` machinery with its own nats-server and redis-server.  Most modules
start their own (they kill, restart or reconfigure services); the end-to-end modules (test_e2e*)
only send requests, so they share one disaggregated stack per test process: each stack costs
seconds of CPU to start, and the end-to-end modules are six."""

from __future__ import annotations

import openai
import pytest

from loraplex.tooling.launcher import Stack, start_stack
from loraplex.tooling.ports import free_port
from loraplex.tooling.up_flags import parse_up_args

STACK_FLAGS = [
    "--dtype",
    "float32",
    "--device",
    "cpu",
    "--max-num-seqs",
    "16",
    "--num-kv-blocks",
    "512",
]


def launch(tmp_path_factory, name: str, extra: list[str]) -> Stack:
    stack = Stack(tmp_path_factory.mktemp(name))
    args = parse_up_args(
        ["--port", str(free_port()), "--run-dir", str(stack.run_dir), *STACK_FLAGS, *extra]
    )
    try:
        base, model, adapters = start_stack(args, stack)
    except BaseException:
        stack.stop()
        raise
    stack.urls["model_dir"] = model
    stack.adapters = adapters  # type: ignore[attr-defined]
    return stack


@pytest.fixture(scope="session")
def disagg_stack(tmp_path_factory):
    stack = launch(tmp_path_factory, "disagg", ["--prefill-workers", "1", "--decode-workers", "2"])
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def client(disagg_stack):
    return openai.OpenAI(
        base_url=disagg_stack.urls["gateway"] + "/v1", api_key="unused", max_retries=0
    )


@pytest.fixture(scope="session")
def model_id(client) -> str:
    ids = [m.id for m in client.models.list().data]
    return ids[0]


@pytest.fixture(scope="session")
def loras(disagg_stack, model_id):
    names = [a.name for a in disagg_stack.adapters]
    return [names[0], None, names[2], names[1], None, names[3]]
