"""vLLM's ``--lora-modules`` (``registration/preload.py``): the forms it is given in, and
registration into a real Redis with the checks a path registration gets."""

from __future__ import annotations

from argparse import ArgumentTypeError
from collections.abc import Callable
from pathlib import Path

import pytest

from loraplex.adapters.registration.preload import (
    LoraModule,
    PreloadError,
    parse_lora_module,
    register_lora_modules,
)
from loraplex.adapters.store import AdapterStore


def test_the_two_forms_vllm_takes() -> None:
    assert parse_lora_module("sql=/a/b=c") == LoraModule("sql", "/a/b=c")
    json_form = '{"name": "sql", "path": "/a", "base_model_name": "m"}'
    assert parse_lora_module(json_form) == LoraModule("sql", "/a")


@pytest.mark.parametrize(
    ("text", "says"),
    [("sql", "NAME=PATH"), ("=/a", "NAME=PATH"), ("sql=", "NAME=PATH"), ("bad name=/a", "invalid"),
     ('{"name": "x"}', '"path"'), ("{nope", "JSON")],
)  # fmt: skip
def test_bad_forms_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ArgumentTypeError, match=says):
        parse_lora_module(text)


async def test_modules_are_registered_public_and_checked(
    redis_url: str,
    prefix: str,
    model_dir: Path,
    make_adapter: Callable[..., Path],
    store: AdapterStore,
) -> None:
    good, other = make_adapter("good", rank=4), make_adapter("other", rank=8)
    modules = [LoraModule("sql", str(good)), LoraModule("chat", str(other))]
    kw = {"max_rank": 16, "max_bytes": 2**20, "redis_prefix": prefix}
    assert await register_lora_modules(redis_url, str(model_dir), modules, "ops", **kw) == [
        "sql",
        "chat",
    ]
    info = await store.get_for("someone-else", "sql")  # public: every tenant may use it
    assert info.owner == "ops" and info.rank == 4 and info.source == str(good.resolve())
    # again (a restart of the stack): the same names are replaced, not refused
    await register_lora_modules(redis_url, str(model_dir), modules[:1], "ops", **kw)
    assert (await store.get_for("ops", "sql")).version > info.version

    too_big = make_adapter("big", rank=32)
    with pytest.raises(PreloadError, match=r"--lora-modules big=.*rank"):
        await register_lora_modules(
            redis_url, str(model_dir), [LoraModule("big", str(too_big))], "ops", **kw
        )
    broken = make_adapter("broken")
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PreloadError, match="--lora-modules broken="):
        await register_lora_modules(
            redis_url, str(model_dir), [LoraModule("broken", str(broken))], "ops", **kw
        )
    with pytest.raises(PreloadError, match="no-such-dir"):
        await register_lora_modules(
            redis_url, str(model_dir), [LoraModule("x", "/no-such-dir")], "ops", **kw
        )
    with pytest.raises(PreloadError, match="twice"):
        await register_lora_modules(
            redis_url, str(model_dir), [modules[0], modules[0]], "ops", **kw
        )
