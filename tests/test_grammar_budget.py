"""A structured-output request whose grammar explodes while matching ends alone with a 400; the
step waits for its grammar at most ``LORAPLEX_GRAMMAR_BUDGET_MS`` and serves everyone else.  The
regexes known to explode (repeats nested 3 deep) are refused before they run.

Found by red-teaming a live stack: the regex ``(((a{0,50}){0,50}){0,50})`` compiles at once, then
took 2.9 s per token to mask after 30 tokens, inside the engine step of every request batched with
it."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from loraplex import LLM, SamplingParams
from loraplex.engine.structured import AVERAGE_AFTER, GrammarConstraints, overrun_message
from loraplex.errors import InvalidRequestError
from loraplex.structured_outputs import StructuredOutputsParams as SO
from loraplex.structured_outputs import repeat_nesting
from loraplex.tooling.demo import write_demo_model

V = 64


class _Allows:
    """A matcher that allows one token, at once."""

    def __init__(self, token: int) -> None:
        self.token = token

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        bitmask[row].zero_()
        bitmask[row, self.token // 32] = 1 << (self.token % 32)

    def accept_token(self, token: int) -> bool:
        return True

    def is_terminated(self) -> bool:
        return False


class _Stuck(_Allows):
    """A matcher whose every call blocks until the test lets it go (after the step gave up)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.release = threading.Event()
        self.calls = 0

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.calls += 1
        self.release.wait(30)

    def accept_token(self, token: int) -> bool:
        self.calls += 1
        self.release.wait(30)
        return True


class _Raises(_Allows):
    def fill_next_token_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        raise RuntimeError("GrammarMatcher has terminated")


class _Seq:
    def __init__(self, request_id: str) -> None:
        self.request_id = request_id


def _constraints(**matchers) -> GrammarConstraints:
    g = GrammarConstraints("unused", V, set(), budget_s=0.05)
    g._matchers.update(matchers)  # what track() would have built
    return g


def test_a_mask_over_the_budget_gives_up_that_request_and_masks_the_others() -> None:
    pytest.importorskip("xgrammar")
    stuck = _Stuck()
    g = _constraints(good=_Allows(5), slow=stuck, broken=_Raises(0))
    seqs = [_Seq("good"), _Seq("free"), _Seq("slow"), _Seq("broken")]
    try:
        out = g.mask(torch.zeros(4, V), seqs)  # would wait 30 s for "slow" without the budget
        assert g.take_overruns() == {"slow", "broken"}
    finally:
        stuck.release.set()
    assert g.take_overruns() == set()  # each given up once
    assert torch.isfinite(out[0]).tolist() == [t == 5 for t in range(V)]  # masked
    assert torch.isfinite(out[1]).all() and torch.isfinite(out[2]).all()  # untouched rows
    assert not g.constrained("slow") and not g.constrained("broken") and g.constrained("good")


def test_advancing_over_the_budget_gives_up_the_request() -> None:
    stuck = _Stuck()
    g = _constraints(slow=stuck)
    try:
        assert g.accept("slow", 3) is False  # not complete: the engine ends it with an error
        assert g.take_overruns() == {"slow"}
    finally:
        stuck.release.set()
    assert stuck.calls == 1 and not g.constrained("slow")


class _Sleeps(_Allows):
    """A matcher that takes ``seconds`` to advance: under the budget, every time."""

    def __init__(self, seconds: float) -> None:
        super().__init__(0)
        self.seconds = seconds

    def accept_token(self, token: int) -> bool:
        time.sleep(self.seconds)
        return True


def test_a_grammar_under_the_budget_but_slow_on_average_is_given_up() -> None:
    # budget 50 ms per token; on average at most a tenth of it, counted from the 8th token
    g = _constraints(slow=_Sleeps(0.01), fast=_Allows(3))
    for _ in range(AVERAGE_AFTER - 1):
        assert g.accept("slow", 1) is False and g.accept("fast", 3) is False
    assert g.take_overruns() == set()  # 10 ms each: under the budget, and not yet averaged
    g.accept("slow", 1)
    assert g.take_overruns() == {"slow"}
    for _ in range(20):
        g.accept("fast", 3)
    assert g.take_overruns() == set() and g.constrained("fast")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("grammar-budget"), num_adapters=0)


def test_an_exploding_regex_ends_alone_with_a_400_and_the_batch_goes_on(demo, monkeypatch):
    monkeypatch.setenv("LORAPLEX_GRAMMAR_BUDGET_MS", "50")
    llm = LLM(demo.model_dir, dtype="float32", device="cpu", block_size=4)
    greedy = {"temperature": 0.0, "max_tokens": 60, "min_tokens": 60, "ignore_eos": True}
    prompts = [[5, 17, 300, 42], [900, 12, 33], [3, 3, 3, 40]]
    honest = [
        SamplingParams(**greedy),
        SamplingParams(**{**greedy, "max_tokens": 24, "min_tokens": 0, "ignore_eos": False},
                       structured_outputs=SO(regex=r"[a-c]{2}-\d{3}")),
    ]  # fmt: skip
    # the regex form is refused up front (below); through rule references no scan can see it
    nested = 'root ::= x{0,50}\nx ::= y{0,50}\ny ::= "a"{0,50}'
    exploding = SamplingParams(**greedy, structured_outputs=SO(grammar=nested))
    alone = llm.generate(prompts[:2], honest)
    together = llm.generate(prompts, [*honest, exploding])
    bad = together[2].outputs[0]
    assert bad.finish_reason == "error", bad
    assert together[2].error == overrun_message(0.05)
    assert set(bad.text) <= {"a"}  # what it streamed before obeyed its constraint
    for a, b in zip(alone, together[:2], strict=True):  # the others: as if it had not been there
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert b.outputs[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize(
    ("pattern", "depth"),
    [
        ("abc", 0), ("a?", 0), ("(a{0,1}){1}", 0), ("a*", 1), ("a{2}", 1), ("a{,5}", 1),
        ("(a+b)*", 2), (r"((\d{1,3}\.){3}\d{1,3})", 2), ("(x(y(z)?)+)*", 2),
        ("(((a{0,50}){0,50}){0,50})", 3), ("(?:(?:a+)+)+", 3), ("((a*)*)*", 3),
        # escapes, classes and literal braces are not groups or repeats
        (r"\(\(a*\)*\)*", 1), ("[(*]+", 1), ("[]*]*", 1), (r"[\]()]+", 1), ("a{x}*", 1),
        # bounds compared as text: int() refuses 5,000 digits (a ValueError, not a 400)
        ("(a{1" + "0" * 5000 + "}){2}", 2), ("(a{001}){0010}", 1), ("(a{0,01})*", 1),
    ],
)  # fmt: skip
def test_repeat_nesting_counts_repeats_inside_repeats(pattern: str, depth: int) -> None:
    assert repeat_nesting(pattern) == depth


def test_regexes_that_nest_repeats_3_deep_are_refused_in_schemas_too() -> None:
    SO(regex="((a{0,50}){0,50})b")  # two levels: fine
    with pytest.raises(InvalidRequestError, match="regex nests repeats 3 deep"):
        SO(regex="(((a{0,50}){0,50}){0,50})")
    schema = {"type": "array", "items": {"type": "string", "pattern": "((a+)+)+"}}
    with pytest.raises(InvalidRequestError, match="pattern nests repeats 3 deep"):
        SO(json=schema)
    SO(json={"type": "object", "properties": {"pattern": {"type": "string"}}})  # a property
