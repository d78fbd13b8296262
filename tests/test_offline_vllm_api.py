"""The offline ``LLM`` spoken as vLLM: ``LLM(model=..., enable_lora=True)``, prompts as text, token
ids and vLLM's prompt dicts, ``lora_request=LoRARequest(name, id, path)`` loaded on first use,
and ``outputs[0]`` on the results.  Each must give exactly what loraplex's own spelling gives
(which the HF + PEFT parity tests hold to the reference)."""

from __future__ import annotations

import pytest

from loraplex import LLM, LoRARequest, SamplingParams
from loraplex.lora.request import LoRARequest as FromVllmPath
from loraplex.tooling.demo import DemoModelInfo, write_demo_model

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, logprobs=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoModelInfo:
    return write_demo_model(tmp_path_factory.mktemp("vllm-api"), num_adapters=2, seed=5)


@pytest.fixture(scope="module")
def llm(demo: DemoModelInfo) -> LLM:
    return LLM(
        model=str(demo.model_dir), enable_lora=True, max_loras=2, dtype="float32", device="cpu"
    )


def test_vllm_spelling_gives_what_the_native_one_gives(llm: LLM, demo: DemoModelInfo) -> None:
    a, b = demo.adapters
    assert FromVllmPath is LoRARequest
    prompts = ["The quick brown fox", {"prompt": "Once upon"}, {"prompt_token_ids": [5, 6, 7]}]
    requests = [LoRARequest("a", 1, str(a.path)), None, LoRARequest("b", 2, str(b.path))]
    got = llm.generate(prompts, GREEDY, lora_request=requests)
    llm.add_lora("native-a", a.path)
    llm.add_lora("native-b", b.path)
    want = llm.generate(
        ["The quick brown fox", "Once upon", [5, 6, 7]], GREEDY, ["native-a", None, "native-b"]
    )
    for g, w in zip(got, want, strict=True):
        (out,) = g.outputs
        assert out.index == 0 and out.token_ids == w.token_ids and out.text == w.text
        assert out.finish_reason == "length" and g.finished
        assert out.cumulative_logprob == pytest.approx(sum(t.logprob for t in w.logprobs or []))
    assert [g.prompt for g in got] == ["The quick brown fox", "Once upon", None]
    assert got[0].token_ids != got[1].token_ids  # the adapters did change the answers


def test_a_lora_request_loads_once_and_again_for_a_new_path(llm: LLM, demo: DemoModelInfo) -> None:
    a, b = demo.adapters
    first = llm.generate("Hello", GREEDY, lora_request=LoRARequest("x", 7, str(a.path)))
    loaded = llm.engine.adapters["x"]
    llm.generate("Hello", GREEDY, lora_request=LoRARequest("x", 7, str(a.path)))
    assert llm.engine.adapters["x"] is loaded  # not loaded again
    other = llm.generate("Hello", GREEDY, lora_request=LoRARequest("x", 7, str(b.path)))
    assert llm.engine.adapters["x"] is not loaded
    assert (
        other[0].token_ids
        == llm.generate("Hello", GREEDY, lora_request=LoRARequest("y", 8, str(b.path)))[0].token_ids
    )
    assert first[0].token_ids != other[0].token_ids
    chat = llm.chat(
        [{"role": "user", "content": "hi"}], GREEDY, lora_request=LoRARequest("x", 7, str(b.path))
    )
    assert chat[0].outputs[0].text == chat[0].text


@pytest.mark.parametrize(
    "call",
    [
        lambda llm: llm.generate("x", GREEDY, "a", lora_request=LoRARequest("a", 1, "/p")),
        lambda llm: llm.generate("x", GREEDY, lora_request=LoRARequest("never-added", 1)),
        lambda llm: llm.generate({"text": "x"}, GREEDY),
        lambda llm: LoRARequest("a", 0, "/p"),
    ],
)
def test_what_vllm_refuses_too(llm: LLM, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call(llm)
