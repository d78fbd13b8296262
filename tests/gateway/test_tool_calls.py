"""Tool calling, plain logic: the request's tools and choice (``tools.py``) and the calls read
out of an answer, streamed or whole (``tool_calls.py``)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from loraplex.gateway.chat_answer import read_answer
from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.tool_calls import ToolCallStream
from loraplex.gateway.tools import MAX_TOOLS, ToolUse, template_arguments, tool_use

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}  # no parameters: any object


def use(choice: Any = None, parallel: bool | None = None, tools: Any = None) -> ToolUse:
    got = tool_use([WEATHER, TIME] if tools is None else tools, choice, parallel, "hermes")
    assert got is not None
    return got


# ---- the request side ------------------------------------------------------------------------


def test_the_choice_defaults_to_auto_with_tools_and_none_without() -> None:
    assert use().choice == "auto"
    assert tool_use(None, None, None, "hermes") is None
    assert tool_use([WEATHER], "none", None, "hermes") is None  # nothing parsed
    named = use({"type": "function", "function": {"name": "get_time"}})
    assert (named.choice, named.named) == ("named", "get_time")
    assert use("required", parallel=False).parallel is False


@pytest.mark.parametrize(
    ("tools", "choice", "param", "words"),
    [
        ([{"type": "retrieval"}], None, "tools.0", "function"),
        (["get_weather"], None, "tools.0", "function"),
        ([{"type": "function", "function": "x"}], None, "tools.0.function", "object"),
        ([{"type": "function", "function": {"name": "a b"}}], None, "tools.0.function.name", "64"),
        ([{"type": "function", "function": {"name": "x" * 65}}], None, "tools.0.function.name", ""),
        ([{"function": {"name": "f", "parameters": []}}], None, "tools.0.function.parameters", ""),
        ([{"function": {"name": "f", "description": 3}}], None, "tools.0.function.description", ""),
        ([WEATHER, WEATHER], None, "tools", "unique"),
        ([WEATHER] * (MAX_TOOLS + 1), None, "tools", "at most"),
        (None, "auto", "tool_choice", "needs tools"),
        ([WEATHER], "sometimes", "tool_choice", "one of"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice", "not in"),
        ([WEATHER], {"type": "function"}, "tool_choice", "named"),
        ([WEATHER], 7, "tool_choice", "named"),
    ],
)
def test_bad_tools_and_choices_name_their_field(
    tools: Any, choice: Any, param: str, words: str
) -> None:
    with pytest.raises(InvalidParamError) as e:
        tool_use(tools, choice, None, "hermes")
    assert e.value.param == param
    assert words in str(e.value)


def test_auto_needs_a_parser_but_required_and_named_do_not() -> None:
    with pytest.raises(InvalidParamError) as e:
        tool_use([WEATHER], None, None, "none")
    assert e.value.param == "tool_choice" and "--tool-call-parser" in str(e.value)
    assert tool_use([WEATHER], "required", None, "none") is not None


def test_required_is_an_array_of_known_calls_and_named_is_the_parameters() -> None:
    schema = json.loads(use("required").constraint().spec)  # type: ignore[union-attr]
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    names = [c["properties"]["name"]["enum"] for c in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    assert (
        schema["items"]["anyOf"][0]["properties"]["parameters"] == WEATHER["function"]["parameters"]
    )
    assert json.loads(use("required", parallel=False).constraint().spec)["maxItems"] == 1  # type: ignore[union-attr]
    named = use({"type": "function", "function": {"name": "get_weather"}}).constraint()
    assert named is not None and json.loads(named.spec) == WEATHER["function"]["parameters"]
    assert use().constraint() is None  # auto: free text, parsed afterwards


def test_a_schema_too_deep_to_compile_is_a_400_on_tools() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(100):
        deep = {"type": "array", "items": deep}
    bad = {"type": "function", "function": {"name": "f", "parameters": deep}}
    with pytest.raises(InvalidParamError) as e:
        use("required", tools=[bad]).constraint()
    assert e.value.param == "tools" and "nests too deeply" in str(e.value)
    assert use(tools=[bad]).constraint() is None  # auto compiles nothing


def test_past_arguments_go_to_templates_as_objects_when_they_are_json_objects() -> None:
    assert template_arguments('{"city": "Paris"}') == {"city": "Paris"}
    assert template_arguments("[1, 2]") == "[1, 2]"
    assert template_arguments("not json") == "not json"
    deep = "[" * 100_000 + "]" * 100_000  # a client's text: json's RecursionError was a 500
    assert template_arguments(deep) == deep


# ---- reading answers ---------------------------------------------------------------------------


def call(name: str, arguments: dict[str, Any]) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def streamed(text: str, u: ToolUse, cuts: list[int]) -> tuple[str, list[dict[str, Any]]]:
    """Feed ``text`` in pieces cut at ``cuts``; the content and the calls, merged by index as
    OpenAI clients merge deltas (arguments concatenated)."""
    stream, content, calls = ToolCallStream(u), "", {}
    bounds = [0, *sorted(cuts), len(text)]
    outs = [stream.feed(text[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    outs.append(stream.finish())
    for out in outs:
        content += out.content
        for d in out.calls:
            merged = calls.setdefault(d["index"], {"name": "", "arguments": ""})
            merged["name"] += d.get("function", {}).get("name", "")
            merged["arguments"] += d["function"].get("arguments", "")
            if "id" in d:
                merged["id"] = d["id"]
    return content, [calls[i] for i in sorted(calls)]


def whole(text: str, u: ToolUse) -> tuple[str | None, list[tuple[str, Any]]]:
    got = read_answer(text, None, u)
    calls = [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got.tool_calls
    ]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in got.tool_calls)
    return got.content, calls


def test_hermes_calls_between_content() -> None:
    text = "Let me look.\n" + call("get_weather", {"city": "Paris"}) + "\n" + call("get_time", {})
    content, calls = whole(text, use())
    assert content == "Let me look.\n\n"  # the text outside the calls, verbatim
    assert calls == [("get_weather", {"city": "Paris"}), ("get_time", {})]


def test_only_calls_give_null_content_and_plain_text_stays_content() -> None:
    assert whole("  " + call("get_time", {}) + "\n", use())[0] is None
    assert whole("Just text, <b>no</b> calls <tool", use()) == (
        "Just text, <b>no</b> calls <tool",
        [],
    )
    assert whole("  \n", use()) == ("  \n", [])


@pytest.mark.parametrize(
    "block",
    [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not one of the tools
        "<tool_call>[1, 2]</tool_call>",
        "<tool_call>" + "[" * 100_000 + "]" * 100_000 + "</tool_call>",  # the model's nesting
    ],
)
def test_a_block_that_is_no_allowed_call_is_given_back_verbatim(block: str) -> None:
    text = "a " + block + " b"
    assert whole(text, use()) == (text, [])


def test_an_unclosed_last_call_still_counts_and_a_broken_one_is_content() -> None:
    opened = '<tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}'
    assert whole(opened, use()) == (None, [("get_time", {"tz": "UTC"})])
    assert whole('<tool_call>{"name": "get_ti', use()) == ('<tool_call>{"name": "get_ti', [])


def test_parallel_false_keeps_the_first_call() -> None:
    text = call("get_time", {}) + call("get_weather", {"city": "Oslo"})
    assert whole(text, use(parallel=False))[1] == [("get_time", {})]


def test_required_reads_the_array_and_named_is_the_arguments() -> None:
    text = json.dumps([{"name": "get_weather", "parameters": {"city": "Rome"}}])
    assert whole(text, use("required")) == (None, [("get_weather", {"city": "Rome"})])
    named = use({"type": "function", "function": {"name": "get_weather"}})
    assert whole('{"city": "Rome"}', named) == (None, [("get_weather", {"city": "Rome"})])
    # cut short by max_tokens: the text as content (required), the partial arguments (named)
    assert read_answer('[{"name": "get_wea', None, use("required")).content == '[{"name": "get_wea'
    assert read_answer('{"ci', None, named).tool_calls[0]["function"]["arguments"] == '{"ci'


@pytest.mark.parametrize("seed", range(200))
def test_streamed_pieces_give_what_the_whole_answer_gives(seed: int) -> None:
    rng = random.Random(seed)
    parts = [
        "Sure.",
        "\n",
        " ",
        call("get_weather", {"city": "Zürich", "unit": "c"}),
        "\n",
        "<tool_call>{oops}</tool_call>",
        " <tool_ca",
        "ll is a tag> ",
        call("get_time", {}),
        "\n\n",
    ]
    text = "".join(rng.sample(parts, k=rng.randint(1, len(parts))))
    for u in (use(), use(parallel=False)):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 12))))
        content, calls = streamed(text, u, cuts)
        whole_content, whole_calls = whole(text, u)
        assert content == (whole_content or "")
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == whole_calls


def test_streamed_named_arguments_arrive_piece_by_piece() -> None:
    stream = ToolCallStream(use({"type": "function", "function": {"name": "get_time"}}))
    first, second, end = stream.feed('{"tz"'), stream.feed(': "UTC"}'), stream.finish()
    assert first.calls[0]["function"] == {"name": "get_time", "arguments": '{"tz"'}
    assert first.calls[0]["id"].startswith("call_")
    assert second.calls == [{"index": 0, "function": {"arguments": ': "UTC"}'}}]
    assert not end


def test_held_back_text_is_a_tag_prefix_only() -> None:
    stream = ToolCallStream(use())
    assert stream.feed("x <tool_").content == "x "  # could still become <tool_call>
    assert stream.feed("box>").content == "<tool_box>"
    assert stream.feed("\n").content == "\n"
    # Leading whitespace waits: it is dropped when calls follow, content when none does.
    stream = ToolCallStream(use())
    assert not stream.feed("\n ") and stream.feed(call("get_time", {})).calls
    assert not stream.finish()
    stream = ToolCallStream(use())
    assert not stream.feed("\n ") and stream.finish().content == "\n "


def test_required_keeps_the_tools_own_definitions_reachable() -> None:
    """Pydantic's schemas (``openai.pydantic_function_tool``) use ``$defs`` and ``#/$defs/...``
    refs; nested in the required array they must still resolve, and two tools may share one."""
    unit = {"enum": ["c", "f"]}
    schema = {
        "$defs": {"Unit": unit},
        "type": "object",
        "properties": {"unit": {"$ref": "#/$defs/Unit"}},
        "required": ["unit"],
    }
    tools = [{"type": "function", "function": {"name": n, "parameters": schema}} for n in "ab"]
    constraint = use("required", tools=tools).constraint()
    assert constraint is not None
    constraint.check()  # compiles: the refs resolve at the root
    assert json.loads(constraint.spec)["$defs"] == {"Unit": unit}
    named = use({"type": "function", "function": {"name": "a"}}, tools=tools).constraint()
    assert named is not None
    named.check()
    clash = {**schema, "$defs": {"Unit": {"enum": ["k"]}}}
    tools.append({"type": "function", "function": {"name": "c", "parameters": clash}})
    with pytest.raises(InvalidParamError, match="differently"):
        use("required", tools=tools).constraint()
