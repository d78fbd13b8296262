"""A batch input file's checks (``batches/lines.py``), as plain unit tests."""

from __future__ import annotations

import json

import pytest

from loraplex.gateway.batches.lines import BatchInputError, check_input, iter_lines
from loraplex.gateway.batches.objects import MAX_ERRORS

CHAT = "/v1/chat/completions"


def line(custom_id: str = "a", **body: object) -> bytes:
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}
    ).encode()


def parse_input(content: bytes, endpoint: str, max_lines: int) -> list:
    check_input(content, endpoint, max_lines)
    return list(iter_lines(content, endpoint))


def test_lines_in_order_and_blank_lines_skipped() -> None:
    content = b"\n\n".join([line("x", messages=[]), line("y", n=2)]) + b"\r\n\n \n"
    assert check_input(content, CHAT, 2) == 2
    lines = list(iter_lines(content, CHAT))
    assert [(x.index, x.custom_id, x.body) for x in lines] == [
        (0, "x", {"messages": []}),
        (1, "y", {"n": 2}),
    ]
    with pytest.raises(BatchInputError) as e:  # line numbers count the blank lines
        check_input(content + b"junk", CHAT, 3)
    assert e.value.errors[0]["line"] == 6


def test_nul_is_text_inside_the_bodys_messages_but_not_in_its_model() -> None:
    ok = line("a", messages=[{"role": "user", "content": "a\x00b"}], stop=["\x00"])
    assert parse_input(ok, CHAT, 10)[0].body["stop"] == ["\x00"]
    with pytest.raises(BatchInputError) as e:
        parse_input(line("a", model="m\x00"), CHAT, 10)
    assert e.value.errors[0]["param"] == "body.model"
    with pytest.raises(BatchInputError) as e:
        parse_input(line("a\x00"), CHAT, 10)
    assert e.value.errors[0]["param"] == "custom_id"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no requests"),
        (b"\xff\xfe\n", "not valid UTF-8"),
        (b"[" * 100_000 + b"\n", "not valid JSON"),
        (b'"x"\n', "not a JSON object"),
        (b'{"custom_id": "\\ud800", "method": "POST", "url": "' + CHAT.encode() + b'", "body": {}}', "lone surrogate"),
        (line("a") + b"\n" + line("a"), "used twice"),
        (line("") , "custom_id must be"),
        (line("a", stream=True), "stream is not supported"),
        (line("a").replace(b'"body": {}', b'"body": []'), "body must be a JSON object"),
        (line("a")[:-1] + b', "extra": 1}', "unknown field"),
    ],
)  # fmt: skip
def test_what_refuses_the_file(content: bytes, message: str) -> None:
    with pytest.raises(BatchInputError) as e:
        parse_input(content, CHAT, 10)
    assert message in e.value.errors[0]["message"], e.value.errors


def test_more_lines_than_allowed_and_many_problems_are_capped() -> None:
    with pytest.raises(BatchInputError, match="holds 3 requests; a batch may hold 2"):
        parse_input(b"\n".join([line(str(i)) for i in range(3)]), CHAT, 2)
    with pytest.raises(BatchInputError) as e:
        parse_input(b"\n".join([b"junk"] * 500), CHAT, 1000)
    assert len(e.value.errors) == MAX_ERRORS == 20 and e.value.errors[-1]["line"] == MAX_ERRORS
