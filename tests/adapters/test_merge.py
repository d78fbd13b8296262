"""LoRAX's merged adapters: the merge strategies against PEFT's ``merge_utils`` (the functions
LoRAX took), the merged id's round trip and its refusals, and ``merge_adapters`` on parsed
adapters (modules, ranks, weight bound)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from loraplex.errors import AdapterError
from loraplex.lora.adapter import LoraAdapter, LoraModule
from loraplex.lora.merge import merge_adapters, merge_tensors
from loraplex.lora.merge_spec import MergeSpec, is_merged_id, parse_merged_id


def tensors(n: int, shape: tuple[int, int] = (6, 10), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


WEIGHTS = [0.7, -0.4, 1.3]
pytestmark = pytest.mark.filterwarnings("ignore:The density .* no pruning:UserWarning")


@pytest.mark.parametrize("strategy", ["linear", "ties", "dare_linear", "dare_ties"])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.2])
@pytest.mark.parametrize("sign", ["total", "frequency"])
def test_strategies_match_peft(strategy: str, density: float, sign: str) -> None:
    # imported here: peft imports triton, which must not load before tests/kernels' conftest
    # sets TRITON_INTERPRET (collection imports every test module first)
    from peft.utils import merge_utils

    ts, w = tensors(3), torch.tensor(WEIGHTS)
    spec = MergeSpec(("t/a", "t/b", "t/c"), tuple(WEIGHTS), strategy, density, sign)
    got = merge_tensors(ts, w, spec, seed=1234)
    torch.manual_seed(1234)  # PEFT's DARE draws from the global generator, in the same order
    if strategy == "linear":
        want = merge_utils.task_arithmetic(ts, w)
    elif strategy == "ties":
        want = merge_utils.ties(ts, w, density, sign)
    elif strategy == "dare_linear":
        want = merge_utils.dare_linear(ts, w, density)
    else:
        want = merge_utils.dare_ties(ts, w, density, sign)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_dare_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    ts, w = tensors(2), torch.tensor([1.0, 1.0])
    spec = MergeSpec(("t/a", "t/b"), (1.0, 1.0), "dare_linear", 0.5)
    first, again = merge_tensors(ts, w, spec, seed=7), merge_tensors(ts, w, spec, seed=7)
    assert torch.equal(first, again)
    assert not torch.equal(first, merge_tensors(ts, w, spec, seed=8))
    # about half the entries of each survive, scaled by 1 / density
    kept = merge_tensors(
        ts[:1], w[:1], dataclasses.replace(spec, adapters=("t/a",), weights=(1.0,)), 7
    )
    survivors = kept != 0
    assert 0.3 < survivors.float().mean() < 0.7
    torch.testing.assert_close(kept[survivors], ts[0][survivors] * 2)


def test_ties_with_density_zero_keeps_nothing() -> None:
    spec = MergeSpec(("t/a", "t/b"), (1.0, 1.0), "ties", 0.0)
    assert not merge_tensors(tensors(2), torch.ones(2), spec, seed=0).any()


def test_the_merged_id_names_the_spec() -> None:
    spec = MergeSpec(("alice/x", "pub/y"), (0.25, -1e-05), "dare_ties", 0.3, "frequency")
    aid = spec.adapter_id("alice")
    assert aid.startswith("alice/+merge:") and "@" not in aid and is_merged_id(aid)
    assert parse_merged_id(aid) == spec
    assert not is_merged_id("alice/x")


@pytest.mark.parametrize(
    "fields",
    [
        {"adapters": (), "weights": ()},
        {"adapters": ("t/a",), "weights": (1.0, 2.0)},
        {"adapters": ("t/a", "t/a"), "weights": (1.0, 2.0)},
        {"adapters": tuple(f"t/a{i}" for i in range(17)), "weights": (1.0,) * 17},
        {"weights": (float("nan"),)},
        {"weights": (1e9,)},
        {"strategy": "slerp"},
        {"density": 1.5},
        {"density": float("nan")},
        {"majority_sign_method": "most"},
        {"adapters": ("a",)},  # not an id
        {"adapters": ("t/+merge:linear:1.0:total:t/a*1.0",)},  # a merge of a merge
    ],
)
def test_bad_specs_are_refused(fields: dict) -> None:
    with pytest.raises(AdapterError):
        MergeSpec(**({"adapters": ("t/a",), "weights": (1.0,)} | fields))


@pytest.mark.parametrize(
    "aid",
    [
        "t/+merge:",
        "t/+merge:linear:1.0:total",
        "t/+merge:linear:x:total:t/a*1.0",
        "t/+merge:linear:1.0:total:t/a",
        "t/+merge:linear:1.0:total:t/a*1.0,",
        "t/+merge:linear:1.0:total:*1.0",
        "t/+merge:bogus:1.0:total:t/a*1.0",
    ],
)
def test_malformed_ids_are_refused(aid: str) -> None:
    with pytest.raises(AdapterError):
        parse_merged_id(aid)


def adapter(name: str, modules: dict[tuple[int, str], tuple[int, int]]) -> LoraAdapter:
    """modules: (layer, target) -> (rank, seed); A ``[rank, 8]``, B ``[12, rank]``."""
    mods = {}
    for at, (rank, seed) in modules.items():
        g = torch.Generator().manual_seed(seed)
        mods[at] = LoraModule(torch.randn(rank, 8, generator=g), torch.randn(12, rank, generator=g))
    return LoraAdapter(name, max(r for r, _ in modules.values()), 8.0, False, ("q_proj",), mods)


def test_merge_adapters_covers_every_module_with_the_adapters_that_adapt_it() -> None:
    x = adapter("x", {(0, "q_proj"): (4, 1), (1, "q_proj"): (4, 2)})
    y = adapter("y", {(0, "q_proj"): (4, 3), (0, "v_proj"): (2, 4)})
    spec = MergeSpec(("t/x", "t/y"), (0.5, 2.0))
    merged = merge_adapters(spec.adapter_id("t"), spec, [x, y])
    assert set(merged.modules) == {(0, "q_proj"), (1, "q_proj"), (0, "v_proj")}
    assert merged.targets == ("q_proj", "v_proj") and merged.rank == 4
    both = merged.modules[(0, "q_proj")]
    torch.testing.assert_close(
        both.a, 0.5 * x.modules[(0, "q_proj")].a + 2.0 * y.modules[(0, "q_proj")].a
    )
    torch.testing.assert_close(
        both.b, 0.5 * x.modules[(0, "q_proj")].b + 2.0 * y.modules[(0, "q_proj")].b
    )
    torch.testing.assert_close(merged.modules[(1, "q_proj")].b, 0.5 * x.modules[(1, "q_proj")].b)
    torch.testing.assert_close(merged.modules[(0, "v_proj")].a, 2.0 * y.modules[(0, "v_proj")].a)


def test_different_ranks_are_refused_naming_bare_names() -> None:
    x = adapter("x", {(0, "q_proj"): (4, 1)})
    y = adapter("y", {(0, "q_proj"): (8, 2)})
    spec = MergeSpec(("owner1/x", "owner2/y"), (1.0, 1.0))
    with pytest.raises(AdapterError, match="ranks differ") as e:
        merge_adapters(spec.adapter_id("t"), spec, [x, y])
    assert "owner" not in str(e.value) and "x, y" in str(e.value)


def test_a_merge_past_the_weight_bound_is_refused() -> None:
    x = adapter("x", {(0, "q_proj"): (4, 1)})
    spec = MergeSpec(("t/x",), (900.0,))
    with pytest.raises(AdapterError, match="out of bounds"):
        merge_adapters(spec.adapter_id("t"), spec, [x], max_abs_weight=100.0)
