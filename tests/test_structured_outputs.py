"""Structured outputs (JSON schema, JSON object, regex, choice, EBNF grammar) in the engine.

A tiny random model left alone writes noise; under a constraint every output must parse, in a
mixed batch, across the prefill -> decode hand-over and through preemption.
"""

from __future__ import annotations

import json
import re

import pytest

from loraplex import LLM, SamplingParams
from loraplex.errors import InvalidRequestError
from loraplex.protocol import SubmitRequest, decode, encode
from loraplex.structured_outputs import StructuredOutputsParams as SO
from loraplex.tooling.demo import write_demo_model

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": ["ann", "bob", "cy"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "member"],
    "additionalProperties": False,
}
CHOICES = ('say "yes"', "no \\ maybe", "über")
REGEX = r"[a-c]{2}-\d{3}"
GRAMMAR = 'root ::= "(" item ("," item)? ("," item)? ")"\nitem ::= [0-9] | "x"'
PROMPTS = [[5, 17, 300, 42], [900, 12, 33], [3, 3, 3, 40], [250, 251], [11, 22, 33, 44, 55]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("structured"), num_adapters=2)


def _llm(demo, **kw) -> LLM:
    llm = LLM(demo.model_dir, dtype="float32", device="cpu", block_size=4, **kw)
    for a in demo.adapters:
        llm.add_lora(a.name, a.path)
    return llm


@pytest.fixture(scope="module")
def llm(demo) -> LLM:
    return _llm(demo)


def _params(so: SO | None, seed: int = 0, **kw) -> SamplingParams:
    return SamplingParams(
        **{"temperature": 1.0, "seed": seed, "max_tokens": 48, **kw}, structured_outputs=so
    )


def _check_schema(text: str) -> bool:
    value = json.loads(text)
    assert list(value) == ["name", "age", "member"]  # the schema's order
    assert value["name"] in ("ann", "bob", "cy") and isinstance(value["member"], bool)
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 120
    return True


CHECKS = {
    "json": (SO(json=SCHEMA), _check_schema),
    "regex": (SO(regex=REGEX), lambda t: re.fullmatch(REGEX, t) is not None),
    "choice": (SO(choice=CHOICES), lambda t: t in CHOICES),
    "grammar": (SO(grammar=GRAMMAR), lambda t: re.fullmatch(r"\([0-9x](,[0-9x]){0,2}\)", t)),
}


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_every_sampled_output_obeys_its_constraint(llm, demo, kind) -> None:
    so, check = CHECKS[kind]
    loras = [None, demo.adapters[0].name, demo.adapters[1].name, None, demo.adapters[0].name]
    params = [_params(so, seed=s) for s in range(len(PROMPTS))]
    for out in llm.generate(PROMPTS, params, lora=loras):
        assert out.finish_reason == "stop", out.text
        assert check(out.text), out.text


def test_json_object_is_an_object(llm) -> None:
    """Any object: a random model writes endless keys, so only finished ones must parse."""
    outs = llm.generate(PROMPTS, [_params(SO(json_object=True), seed=s) for s in range(5)])
    assert all(o.text.startswith('{"') or o.text == "{}" for o in outs)
    assert all(isinstance(json.loads(o.text), dict) for o in outs if o.finish_reason == "stop")


def test_unconstrained_rows_of_a_mixed_batch_are_untouched(llm, demo) -> None:
    free = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    alone = llm.generate(PROMPTS[:2], free, lora=[None, demo.adapters[0].name])
    mixed = llm.generate(
        PROMPTS[:2] + PROMPTS[:2],
        [free, free, _params(SO(json=SCHEMA)), _params(SO(choice=CHOICES))],
        lora=[None, demo.adapters[0].name, None, demo.adapters[0].name],
    )
    assert [o.token_ids for o in mixed[:2]] == [o.token_ids for o in alone]
    _check_schema(mixed[2].text)
    assert mixed[3].text in CHOICES
    unconstrained = llm.generate(PROMPTS[0], _params(None, max_tokens=48))[0].text
    assert not _parses(unconstrained)  # the constraint, not the model, makes it JSON


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_logprobs_are_of_the_raw_distribution(llm) -> None:
    """The mask shapes sampling only: a constrained token's logprob is the model's own
    log-softmax, not the renormalised distribution over the allowed tokens."""
    params = _params(SO(choice=CHOICES), logprobs=0, max_tokens=1)
    out = llm.generate(PROMPTS[1], params)[0]
    raw = llm.engine.last_logits[out.request_id].log_softmax(-1)
    token = out.token_ids[0]
    assert out.logprobs[0].logprob == pytest.approx(float(raw[token]), abs=1e-5)
    assert (
        out.logprobs[0].logprob < -1.0
    )  # little of a random model's mass is on the allowed tokens


def test_constraint_survives_the_handover(demo, llm) -> None:
    so = SO(json=SCHEMA)
    params = SamplingParams(temperature=0, max_tokens=48, structured_outputs=so)
    whole = llm.generate(PROMPTS[2], params)[0]
    prefill, decode_engine = _llm(demo).engine, _llm(demo).engine
    prefill.add_request("r", PROMPTS[2], params, prefill_only=True)
    (out,) = prefill.step()
    assert decode_engine.reserve_blocks("r", out.handoff.num_tokens)
    first = decode_engine.inject("r", PROMPTS[2], params, None, out.handoff.first_token,
                                 out.handoff.payload)  # fmt: skip
    tokens = list(first.new_token_ids)
    while decode_engine.has_unfinished():
        for o in decode_engine.step():
            tokens += o.new_token_ids
    assert tokens == whole.token_ids
    _check_schema(whole.text)


def test_constraint_survives_preemption(demo, llm) -> None:
    params = [
        SamplingParams(temperature=0, max_tokens=40, structured_outputs=CHECKS[k][0])
        for k in ("json", "grammar", "regex", "json", "choice")
    ]
    roomy = llm.generate(PROMPTS, params)
    tight = _llm(demo, num_kv_blocks=14, max_model_len=48, enable_prefix_caching=False)
    got = tight.generate(PROMPTS, params)
    assert tight.engine.scheduler is not None
    assert [o.token_ids for o in got] == [o.token_ids for o in roomy]


@pytest.mark.parametrize(
    "so",
    [SO(json='{"type": "nonsense"}'), SO(regex="(ab"), SO(grammar="root ::= "), SO(json="{x")],
)
def test_bad_constraints_are_refused_before_running(llm, so) -> None:
    with pytest.raises(InvalidRequestError, match="structured output"):
        so.check()
    with pytest.raises(InvalidRequestError, match="structured output"):
        llm.engine.add_request("bad", PROMPTS[0], _params(so))
    assert not llm.engine.has_unfinished()
    assert not llm.engine.grammars.constrained("bad")


def test_exactly_one_constraint() -> None:
    for bad in ({}, {"json": SCHEMA, "regex": "a"}, {"choice": ()}, {"choice": ("a", "")}):
        with pytest.raises(InvalidRequestError):
            SO(**bad)


@pytest.mark.parametrize("so", [*(so for so, _ in CHECKS.values()), SO(json_object=True)])
def test_constraints_cross_the_wire(so) -> None:
    params = _params(so)
    sub = SubmitRequest("r", "t", "g", [1, 2], params)
    back = decode(encode(sub), SubmitRequest).sampling
    assert back == params


def test_a_token_outside_the_grammar_ends_the_output_not_the_step(llm) -> None:
    """A token the grammar rejects (impossible with the mask) ends that output; it does not
    raise inside the step, which would fail every request of the batch."""
    grammars = llm.engine.grammars
    grammars.track("g", SO(choice=("abc",)))
    allowed = llm.tokenizer.encode("a", add_special_tokens=False)[0]
    forbidden = llm.tokenizer.encode("z", add_special_tokens=False)[0]
    assert grammars.accept("g", allowed) is False  # a valid prefix: not complete yet
    assert grammars.accept("g", forbidden) is True
    grammars.forget("g")
    assert grammars.accept("g", forbidden) is False  # unconstrained requests are never ended
