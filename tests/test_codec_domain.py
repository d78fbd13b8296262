"""Domain types on the wire (``codec.wire_type``): ``SamplingParams`` with its constraint and
``logit_bias``, ``TokenLogprobs``; and what a hostile or newer peer gets for bad ones."""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import pytest

from loraplex.codec import wire_type
from loraplex.protocol import (
    PrefillAssign,
    ProtocolError,
    SubmitRequest,
    TokenDelta,
    decode,
    encode,
)
from loraplex.sampling_params import SamplingParams
from loraplex.structured_outputs import StructuredOutputsParams
from loraplex.token_logprobs import TokenLogprobs

PARAMS = SamplingParams(
    max_tokens=7,
    temperature=0.5,
    seed=2**64 - 1,
    stop=("END", "\n\n"),
    stop_token_ids=(3, 4),
    skip_special_tokens=False,
    logit_bias={5: -100.0, 0: 0.5},
    logprobs=2,
    structured_outputs=StructuredOutputsParams(choice=("yes", "no")),
    allowed_token_ids=(5, 9, 11),
    bad_words_token_ids=((7,), (8, 9, 10)),
)


def _raw(msg: object) -> dict:
    return msgpack.unpackb(encode(msg), raw=False)  # type: ignore[arg-type]


def _repacked(raw: dict) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


def test_sampling_params_travel_as_they_are() -> None:
    sub = SubmitRequest("r", "t", "gw", [1, 2], PARAMS)
    back = decode(encode(PrefillAssign(sub)), PrefillAssign).request.sampling
    assert back == PARAMS and back.logit_bias == {5: -100.0, 0: 0.5}
    assert back.stop == ("END", "\n\n") and back.structured_outputs.choice == ("yes", "no")
    wire = _raw(sub)["d"]["sampling"]
    assert wire["logit_bias"] == [[5, -100.0], [0, 0.5]]  # int keys as pairs
    assert wire["stop"] == ["END", "\n\n"]
    assert back.allowed_token_ids == (5, 9, 11)
    assert back.bad_words_token_ids == ((7,), (8, 9, 10))


def test_token_logprobs_travel_as_they_are() -> None:
    lps = [TokenLogprobs(4, -0.25, ((4, -0.25), (9, -2.0))), TokenLogprobs(5, -1.0)]
    delta = TokenDelta("r", [4, 5], "ab", logprobs=lps, prompt_logprobs=lps[:1])
    back = decode(encode(delta), TokenDelta)
    assert back == delta and back.logprobs[0].top == ((4, -0.25), (9, -2.0))


def _with_sampling(**changes: object) -> bytes:
    raw = _raw(SubmitRequest("r", "t", "gw", [1], PARAMS))
    raw["d"]["sampling"].update(changes)
    return _repacked(raw)


@pytest.mark.parametrize(
    "changes",
    [
        {"temperature": -1.0},  # SamplingParams' own check (InvalidRequestError)
        {"max_tokens": 0},
        {"logprobs": 10**6},
        {"stop": "END"},  # a tuple travels as a list
        {"stop": [1]},
        {"logit_bias": {"5": 1.0}},  # a map keyed by strings where ids are ints
        {"logit_bias": [[5, 1.0, 2.0]]},  # not a pair
        {"logit_bias": [["5", 1.0]]},
        {"logit_bias": [[5, 1e9]]},  # out of range: SamplingParams refuses it
        {"structured_outputs": {"regex": "a", "grammar": "root ::= 'a'"}},  # two constraints
        {"structured_outputs": {"choice": []}},
        {"structured_outputs": "json"},
        {"max_tokens": True},  # a bool is no int
        {"top_p": 2},  # an int is a float, then out of range
        {"allowed_token_ids": []},
        {"allowed_token_ids": [-1]},
        {"allowed_token_ids": ["5"]},
        {"bad_words_token_ids": [[]]},
        {"bad_words_token_ids": [5]},
        {"bad_words_token_ids": [[1]] * 257},
    ],
)
def test_bad_domain_values_are_protocol_errors(changes: dict) -> None:
    with pytest.raises(ProtocolError):
        decode(_with_sampling(**changes), SubmitRequest)


def test_bad_logprob_pairs_are_protocol_errors() -> None:
    raw = _raw(TokenDelta("r", [4], logprobs=[TokenLogprobs(4, -1.0, ((4, -1.0),))]))
    for top in ([[4]], [[4, -1.0, 0]], [["4", -1.0]], {"4": -1.0}):
        raw["d"]["logprobs"][0]["top"] = top
        with pytest.raises(ProtocolError):
            decode(_repacked(raw), TokenDelta)


def test_unknown_tags_are_protocol_errors_and_unknown_fields_are_ignored() -> None:
    raw = _raw(SubmitRequest("r", "t", "gw", [1], PARAMS))
    raw["t"] = "sampling"  # a domain type is no message of its own
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(_repacked(raw), SubmitRequest)
    raw = _raw(SubmitRequest("r", "t", "gw", [1], PARAMS))
    raw["d"]["sampling"]["newer_knob"] = 1  # a newer peer's field (docs/contributing.md)
    assert decode(_repacked(raw), SubmitRequest).sampling == PARAMS


def test_only_frozen_dataclasses_are_wire_types() -> None:
    @dataclass
    class Loose:
        x: int

    with pytest.raises(TypeError):
        wire_type(Loose)
