"""Locally typical sampling (``typical_p``, TGI/LoRAX and transformers): the kept set equals
transformers' ``TypicalLogitsWarper`` on random and masked logits, draws come only from it, and
1.0 leaves a row as it is."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TypicalLogitsWarper

from loraplex.engine.sampler import _filter_typical, sample
from loraplex.errors import InvalidRequestError
from loraplex.sampling_params import SamplingParams


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("seed", range(4))
def test_the_kept_set_is_transformers(mass: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 500, generator=g) * (1 + seed)
    logits[0, :100] = float("-inf")  # a masked row (grammar, allowed ids)
    ours = _filter_typical(logits, torch.full((6,), mass))
    theirs = TypicalLogitsWarper(mass)(None, logits.clone())  # type: ignore[arg-type]
    assert torch.equal(ours == float("-inf"), theirs == float("-inf"))


def test_one_keeps_everything_and_rows_keep_their_own_mass() -> None:
    logits = torch.randn(3, 200, generator=torch.Generator().manual_seed(9))
    out = _filter_typical(logits, torch.tensor([1.0, 0.3, 1.0]))
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    assert (out[1] == float("-inf")).any()


def test_draws_come_from_the_typical_set() -> None:
    logits = torch.randn(1, 300, generator=torch.Generator().manual_seed(2)) * 3
    kept = _filter_typical(logits, torch.tensor([0.4]))[0] > float("-inf")
    params = [SamplingParams(temperature=1.0, typical_p=0.4)]
    for i in range(50):
        gen = torch.Generator().manual_seed(i)
        (token,) = sample(logits.clone(), params, [gen])
        assert kept[token]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(InvalidRequestError, match="typical_p"):
        SamplingParams(typical_p=bad)
