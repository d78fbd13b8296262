"""Long scalar lists (a prompt's token ids) are checked in C, with the same verdicts as the
per-item path: a bool is not an int, and neither is a string, a float, null or a list."""

from __future__ import annotations

import msgpack
import pytest

from loraplex import codec
from loraplex.protocol import ProtocolError, SubmitRequest, TokenDelta, decode, encode
from loraplex.sampling_params import SamplingParams


def _submit(tokens: list) -> bytes:
    good = encode(SubmitRequest("r", "t", "g", [1], SamplingParams(max_tokens=2)))
    raw = msgpack.unpackb(good, raw=False)
    raw["d"]["prompt_token_ids"] = tokens
    return msgpack.packb(raw, use_bin_type=True)


def test_a_long_prompt_decodes_without_one_check_per_token(monkeypatch) -> None:
    calls = 0
    check = codec._check

    def counted(*a):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return check(*a)

    monkeypatch.setattr(codec, "_check", counted)
    tokens = list(range(4000))
    sub = decode(_submit(tokens), SubmitRequest)
    assert sub.prompt_token_ids == tokens
    assert calls < 100  # the fields, not the tokens


@pytest.mark.parametrize(
    "tokens",
    [[1, 2, True], [1, "2"], [1, 2.0], [None], [[1]], [True] * 3],
    ids=["bool", "str", "float", "null", "nested", "all-bools"],
)
def test_a_bad_token_anywhere_in_the_list_is_refused(tokens: list) -> None:
    with pytest.raises(ProtocolError):
        decode(_submit(tokens), SubmitRequest)


def test_bools_never_pass_as_ints_and_tuples_travel_as_lists() -> None:
    delta = TokenDelta("r", [5], completion_tokens=1)
    raw = msgpack.unpackb(encode(delta), raw=False)
    raw["d"]["token_ids"] = [True]
    with pytest.raises(ProtocolError):
        decode(msgpack.packb(raw), TokenDelta)
    sub = SubmitRequest("r", "t", "g", [1], SamplingParams(max_tokens=2, stop_token_ids=(3, 4)))
    assert decode(encode(sub), SubmitRequest) == sub
    assert encode(sub) == encode(decode(encode(sub), SubmitRequest))  # tuples travel as lists
