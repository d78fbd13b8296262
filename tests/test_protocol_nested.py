"""Nested messages and domain types on the wire: inside lists (TokenDelta.logprobs) and optional
(KVBegin)."""

from __future__ import annotations

import msgpack
import pytest

from loraplex.protocol import (
    KVBegin,
    ProtocolError,
    SubmitRequest,
    TokenDelta,
    decode,
    encode,
)
from loraplex.sampling_params import SamplingParams
from loraplex.token_logprobs import TokenLogprobs


def test_lists_of_messages_round_trip() -> None:
    delta = TokenDelta(
        "r", [4, 5], "ab", None, logprobs=[TokenLogprobs(4, -0.25, ((4, -0.25), (9, -2.0)))] * 2
    )
    assert decode(encode(delta), TokenDelta) == delta
    assert decode(encode(TokenDelta("r", [4], "a", None)), TokenDelta).logprobs is None


def test_optional_nested_message_round_trips() -> None:
    sub = SubmitRequest("r", "t", "gw", [1, 2], SamplingParams(logprobs=3, repetition_penalty=1.5))
    begin = KVBegin(sub, 7, 2, 1, "float32", [1], first_logprobs=TokenLogprobs(7, -1.5))
    back = decode(encode(begin), KVBegin)
    assert back == begin and back.request.sampling.logprobs == 3


def test_malformed_nested_items_are_refused() -> None:
    raw = msgpack.unpackb(
        encode(TokenDelta("r", [4], "a", None, logprobs=[TokenLogprobs(4, -1.0)]))
    )
    raw["d"]["logprobs"] = [{"token_id": "four", "logprob": -1.0}]
    with pytest.raises(ProtocolError):
        decode(msgpack.packb(raw), TokenDelta)
