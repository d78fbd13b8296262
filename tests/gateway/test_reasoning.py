"""Reasoning parsers (``reasoning.py``), with tool calls after them (``chat_answer.py``), and
``chat_template_kwargs``: plain logic; the gateway round trip is in test_reasoning_api.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from loraplex.errors import InvalidRequestError
from loraplex.gateway.chat_answer import AnswerStream, read_answer
from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.schemas import checked_template_kwargs
from loraplex.gateway.tools import tool_use
from loraplex.text.chat_template import render_chat
from loraplex.text.tokenizer import Tokenizer
from loraplex.tooling.demo import write_demo_model

TOOLS = tool_use([{"type": "function", "function": {"name": "f"}}], None, None, "hermes")


def reasoned(text: str, parser: str) -> tuple[str | None, str | None]:
    answer = read_answer(text, parser, None)
    return answer.reasoning, answer.content


@pytest.mark.parametrize(
    ("parser", "text", "want"),
    [
        ("deepseek_r1", "I think so.</think>\n\nYes.", ("I think so.", "Yes.")),
        ("deepseek_r1", "<think>Hmm.</think>Yes.", ("Hmm.", "Yes.")),  # the model opened it
        ("deepseek_r1", "still thinking when cut", ("still thinking when cut", None)),
        ("deepseek_r1", "</think>", ("", None)),
        ("qwen3", "<think>\nHmm.\n</think>\n\nYes.", ("\nHmm.\n", "Yes.")),
        ("qwen3", "  <think>a</think>b", ("a", "b")),
        ("qwen3", "No thinking here.", (None, "No thinking here.")),
        ("qwen3", "Text with </think> inside.", (None, "Text with </think> inside.")),
        ("qwen3", "<thin", (None, "<thin")),  # never became the tag
        ("qwen3", "", (None, "")),
    ],
)
def test_what_each_parser_reads(
    parser: str, text: str, want: tuple[str | None, str | None]
) -> None:
    assert reasoned(text, parser) == want


def test_thinking_then_a_tool_call() -> None:
    text = 'Need f.</think>\n<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    answer = read_answer(text, "deepseek_r1", TOOLS)
    assert answer.reasoning == "Need f." and answer.content is None
    assert [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in answer.tool_calls
    ] == [("f", {"x": 1})]
    # a call written inside the thinking is thinking, not a call
    inside = read_answer('<tool_call>{"name": "f"}</tool_call></think>ok', "deepseek_r1", TOOLS)
    assert inside.tool_calls == [] and inside.content == "ok"


@pytest.mark.parametrize("seed", range(150))
def test_streamed_pieces_give_what_the_whole_answer_gives(seed: int) -> None:
    rng = random.Random(seed)
    parts = [" ", "<think>", "why?", "</think>", "\n\n", "Answer <", "</thi", "nk",
             '<tool_call>{"name": "f", "arguments": {}}</tool_call>', "tail"]  # fmt: skip
    text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 8)))
    parser = rng.choice(["deepseek_r1", "qwen3"])
    tools = rng.choice([None, TOOLS])
    stream = AnswerStream(parser, tools)
    cuts = sorted(rng.sample(range(1, len(text)), k=min(max(len(text) - 1, 0), 6))) if text else []
    bounds = [0, *cuts, len(text)]
    reasoning, content, calls = "", "", []
    for a, b in zip(bounds, bounds[1:], strict=False):
        piece = stream.feed(text[a:b])
        reasoning, content, calls = (
            reasoning + piece.reasoning,
            content + piece.content,
            calls + piece.calls,
        )
    last = stream.finish()
    reasoning, content, calls = (
        reasoning + last.reasoning,
        content + last.content,
        calls + last.calls,
    )
    whole = read_answer(text, parser, tools)
    assert (whole.reasoning or "") == reasoning, text
    assert (whole.content or "") == content, text
    assert [c["function"] for c in calls] == [c["function"] for c in whole.tool_calls], text


def test_template_kwargs_reach_the_template_but_never_replace_its_variables(
    tmp_path: Path,
) -> None:
    tok = Tokenizer(write_demo_model(tmp_path, num_adapters=0).model_dir)
    tok.chat_template = "{{ enable_thinking }}|{{ messages | length }}|{{ add_generation_prompt }}"
    messages = [{"role": "user", "content": "hi"}]
    kwargs = {"enable_thinking": False, "messages": [1, 2, 3], "add_generation_prompt": "x"}
    assert tok.apply_chat_template(messages, True, None, kwargs) == "False|1|True"


@pytest.mark.parametrize(
    "kwargs",
    [{"messages": 1}, {"tools": []}, {"bos_token": "x"}, {"1abc": 1}, {"a-b": 1}, {"x" * 65: 1},
     {f"k{i}": i for i in range(33)}],
)  # fmt: skip
def test_bad_template_kwargs_are_a_400(kwargs: dict) -> None:
    with pytest.raises(InvalidParamError) as e:
        checked_template_kwargs(kwargs)
    assert e.value.param == "chat_template_kwargs"
    assert checked_template_kwargs({"enable_thinking": True}) == {"enable_thinking": True}


def test_a_template_expression_that_fails_on_request_values_is_a_request_error() -> None:
    with pytest.raises(InvalidRequestError, match="chat template failed"):
        render_chat("{{ 'a' + flag }}", [], flag=1)
    with pytest.raises(InvalidRequestError, match="chat template failed"):
        render_chat("{{ 1 / zero }}", [], zero=0)
