"""engine.sampler.sample on synthetic logits: greedy, top-k, top-p, seeded generators, statistics."""

from __future__ import annotations

import math

import pytest
import torch

from loraplex.engine.sampler import sample
from loraplex.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draw(logits_row: torch.Tensor, params: SamplingParams, n: int, seed: int) -> list[int]:
    """n samples for one row of logits from one seeded generator (n rows sharing it)."""
    g = gen(seed)
    logits = logits_row[None, :].repeat(n, 1)
    return sample(logits, [params] * n, [g] * n)


def counts(tokens: list[int], vocab: int) -> list[int]:
    out = [0] * vocab
    for t in tokens:
        out[t] += 1
    return out


def chi_square(observed: list[int], probs: list[float]) -> float:
    n = sum(observed)
    return sum((o - n * p) ** 2 / (n * p) for o, p in zip(observed, probs, strict=False) if p > 0)


# Critical values of the chi-square distribution at p = 0.001 (df -> value).
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def test_greedy_rows_take_the_argmax():
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    out = sample(logits, [GREEDY] * 6, [None] * 6)
    assert out == logits.argmax(dim=-1).tolist()
    assert all(isinstance(t, int) for t in out)


def test_top_k_one_is_greedy_whatever_the_temperature():
    torch.manual_seed(1)
    logits = torch.randn(4, 30)
    params = [SamplingParams(temperature=t, top_k=1) for t in (0.5, 1.0, 2.0, 10.0)]
    for seed in range(5):
        assert sample(logits, params, [gen(seed)] * 4) == logits.argmax(dim=-1).tolist()


def test_greedy_rows_are_not_disturbed_by_sampled_rows():
    torch.manual_seed(2)
    logits = torch.randn(5, 40)
    params = [
        GREEDY,
        SamplingParams(temperature=1.0),
        GREEDY,
        SamplingParams(temperature=2.0),
        GREEDY,
    ]
    out = sample(logits, params, [None, gen(3), None, gen(4), None])
    argmax = logits.argmax(dim=-1).tolist()
    assert [out[0], out[2], out[4]] == [argmax[0], argmax[2], argmax[4]]


def test_tiny_top_p_is_greedy():
    torch.manual_seed(3)
    logits = torch.randn(8, 64)
    params = [SamplingParams(temperature=1.5, top_p=1e-6)] * 8
    assert sample(logits, params, [gen(0)] * 8) == logits.argmax(dim=-1).tolist()


def test_top_k_only_draws_from_the_k_largest_logits():
    logits = torch.tensor([0.5, 3.0, -1.0, 2.5, 2.0, 0.0, 1.0, -2.0])
    top3 = {1, 3, 4}
    tokens = draw(logits, SamplingParams(temperature=1.0, top_k=3), 3000, seed=0)
    assert set(tokens) == top3  # every allowed token shows up, nothing else does
    # inside the top-k the draw follows the renormalised softmax
    kept = torch.tensor([logits[i].item() for i in sorted(top3)]).softmax(-1).tolist()
    observed = [counts(tokens, 8)[i] for i in sorted(top3)]
    assert chi_square(observed, kept) < CHI2_999[2]


def test_top_k_with_high_temperature_on_wide_random_logits():
    torch.manual_seed(4)
    logits = torch.randn(200, 1000) * 3
    params = [SamplingParams(temperature=2.0, top_k=5)] * 200
    out = sample(logits, params, [gen(1)] * 200)
    top5 = logits.topk(5, dim=-1).indices
    for row, tok in enumerate(out):
        assert tok in top5[row].tolist()
    assert len({(r, t) for r, t in enumerate(out) if t != top5[r, 0].item()}) > 0


def test_top_k_larger_than_vocab_means_no_filtering():
    logits = torch.zeros(6)
    tokens = draw(logits, SamplingParams(temperature=1.0, top_k=100), 1200, seed=5)
    assert set(tokens) == set(range(6))


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    # 0.5 < 0.7 <= 0.5 + 0.3: the nucleus is {0, 1}
    tokens = draw(logits, SamplingParams(temperature=1.0, top_p=0.7), 3000, seed=6)
    assert set(tokens) == {0, 1}
    c = counts(tokens, 4)
    assert chi_square(c[:2], [0.5 / 0.8, 0.3 / 0.8]) < CHI2_999[1]
    # 0.8 < 0.9 <= 0.95: the nucleus is {0, 1, 2}
    tokens = draw(logits, SamplingParams(temperature=1.0, top_p=0.9), 3000, seed=7)
    assert set(tokens) == {0, 1, 2}
    c = counts(tokens, 4)
    assert chi_square(c[:3], [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95]) < CHI2_999[2]


def test_top_p_on_permuted_vocab():
    # the mask must follow probability order, not token id order
    probs = torch.tensor([0.05, 0.15, 0.5, 0.3])
    tokens = draw(probs.log(), SamplingParams(temperature=1.0, top_p=0.7), 2000, seed=8)
    assert set(tokens) == {2, 3}


def test_top_k_and_top_p_combine():
    # top_k=3 leaves {0: .4, 1: .3, 2: .2} -> renormalised .444/.333/.222; top_p=0.6 keeps {0, 1}
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    tokens = draw(probs.log(), SamplingParams(temperature=1.0, top_k=3, top_p=0.6), 2000, seed=9)
    assert set(tokens) == {0, 1}


def test_top_p_applies_after_temperature():
    # at temperature 1 the top token alone has 0.6 >= 0.55 of the mass; at temperature 4 the
    # distribution flattens (0.30, 0.26, 0.23, 0.21) and three tokens are needed.
    probs = torch.tensor([0.6, 0.25, 0.1, 0.05])
    cold = draw(probs.log(), SamplingParams(temperature=1.0, top_p=0.55), 500, seed=10)
    assert set(cold) == {0}
    hot = draw(probs.log(), SamplingParams(temperature=4.0, top_p=0.55), 3000, seed=11)
    assert set(hot) == {0, 1}


def test_seeded_generators_are_reproducible():
    torch.manual_seed(12)
    logits = torch.randn(3, 100)
    params = [SamplingParams(temperature=1.0)] * 3

    def run(seed):
        g = gen(seed)
        return [sample(logits, params, [g, g, g]) for _ in range(10)]

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_a_row_with_its_own_generator_ignores_its_batch_mates():
    torch.manual_seed(13)
    target = torch.randn(1, 200)
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.9)
    alone = [sample(target, [p], [g])[0] for g in [gen(99)] for _ in range(20)]

    g = gen(99)
    mates_gen = gen(5)
    in_batch = []
    for _step in range(20):
        others = torch.randn(3, 200)
        logits = torch.cat([others[:1], target, others[1:]])
        params = [
            SamplingParams(temperature=0.7),
            p,
            GREEDY,
            SamplingParams(temperature=1.3, top_k=10),
        ]
        in_batch.append(sample(logits, params, [mates_gen, g, None, mates_gen])[1])
    assert in_batch == alone


def test_generator_none_uses_global_rng():
    torch.manual_seed(14)
    logits = torch.randn(1, 300)
    p = SamplingParams(temperature=1.0)
    torch.manual_seed(0)
    a = [sample(logits, [p], [None])[0] for _ in range(10)]
    torch.manual_seed(0)
    b = [sample(logits, [p], [None])[0] for _ in range(10)]
    assert a == b


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_sampling_follows_softmax(temperature):
    logits = torch.tensor([1.0, 0.2, -0.5, 0.8, -1.5, 0.0])
    probs = (logits / temperature).softmax(-1).tolist()
    n = 12000
    tokens = draw(logits, SamplingParams(temperature=temperature), n, seed=2024)
    observed = counts(tokens, len(probs))
    stat = chi_square(observed, probs)
    assert stat < CHI2_999[len(probs) - 1], (observed, [round(p * n) for p in probs])
    # and a looser per-token check: within 5 standard deviations
    for o, p in zip(observed, probs, strict=False):
        assert abs(o - n * p) < 5 * math.sqrt(n * p * (1 - p)) + 1


def test_statistical_check_detects_wrong_distribution():
    # guards the chi-square helper itself: uniform samples must not pass as softmax samples
    logits = torch.tensor([2.0, 0.0, -2.0])
    probs = logits.softmax(-1).tolist()
    uniform = draw(torch.zeros(3), SamplingParams(temperature=1.0), 6000, seed=1)
    assert chi_square(counts(uniform, 3), probs) > CHI2_999[2]


def test_extreme_logits_do_not_produce_masked_tokens():
    logits = torch.full((1, 10), -1e4)
    logits[0, 7] = 0.0
    logits[0, 2] = -0.5
    tokens = draw(logits[0], SamplingParams(temperature=1.0, top_k=3), 500, seed=3)
    assert set(tokens) <= {7, 2}


def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    # floor = 0.35 * 0.5 = 0.175: {0, 1} stay, renormalised to .625 / .375
    tokens = draw(probs.log(), SamplingParams(temperature=1.0, min_p=0.35), 3000, seed=15)
    assert set(tokens) == {0, 1}
    assert chi_square(counts(tokens, 4)[:2], [0.625, 0.375]) < CHI2_999[1]
    # floor = 0.25 * 0.5 = 0.125: token 2 (0.15) stays too
    tokens = draw(probs.log(), SamplingParams(temperature=1.0, min_p=0.25), 3000, seed=16)
    assert set(tokens) == {0, 1, 2}
    assert set(draw(probs.log(), SamplingParams(min_p=1.0), 300, seed=17)) == {0}


def test_min_p_applies_after_temperature():
    # at temperature 4 the distribution flattens (0.30, 0.26, 0.23, 0.21): min_p 0.5 keeps all
    probs = torch.tensor([0.6, 0.25, 0.1, 0.05])
    assert set(draw(probs.log(), SamplingParams(min_p=0.5), 500, seed=18)) == {0}
    assert set(draw(probs.log(), SamplingParams(temperature=4.0, min_p=0.5), 3000, seed=19)) == {
        0,
        1,
        2,
        3,
    }


# ---- no accepted parameter combination crashes the sampler --------------------------------
F32_MAX = torch.finfo(torch.float32).max
VOCAB = 12


def _extreme_rows() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(20)
    rows = [
        torch.randn(VOCAB, generator=g) * 3,
        torch.zeros(VOCAB),
        torch.randn(VOCAB, generator=g) * 1e30,
        torch.tensor([F32_MAX, -F32_MAX] * (VOCAB // 2)),
        torch.full((VOCAB,), -F32_MAX),
    ]
    masked = torch.full((VOCAB,), float("-inf"))  # a grammar mask leaving two tokens
    masked[[3, 8]] = torch.tensor([-1e4, 1e4])
    rows.append(masked)
    holes = torch.randn(VOCAB, generator=g)
    holes[[0, 5]] = float("nan")
    holes[[2]] = float("inf")
    rows.append(holes)
    rows.append(torch.full((VOCAB,), float("-inf")))  # nothing left: keeps its argmax
    return rows


GRID = [
    SamplingParams(temperature=t, top_p=p, top_k=k, min_p=m)
    for t in (0.0, 1e-300, 0.01, 1.0, 1e300)
    for p in (1e-300, 0.5, 1.0)
    for k in (-1, 1, 2, 2**31)
    for m in (0.0, 1e-300, 0.5, 1.0)
]


def test_every_accepted_combination_draws_a_token_in_range():
    rows = _extreme_rows()
    logits = torch.stack([r for r in rows for _ in GRID])
    params = [p for _ in rows for p in GRID]
    out = sample(logits, params, [gen(i) for i in range(len(params))])
    assert len(out) == len(params) and all(isinstance(t, int) and 0 <= t < VOCAB for t in out)
    for n, (row, tok) in enumerate(zip(logits, out, strict=True)):
        alive = row > float("-inf")
        if alive.any():  # never a masked or NaN token while another one is left
            assert alive[tok], (n, params[n], row.tolist(), tok)


def test_overflowing_temperatures_follow_the_limits():
    # 1e-300 is raised to 0.01: on well separated logits that is the argmax, never a crash
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    assert sample(logits, [SamplingParams(temperature=1e-300)], [gen(0)]) == [1]
    # 1e300 is (nearly) uniform, even with +-F32_MAX logits
    row = torch.tensor([F32_MAX, -F32_MAX, 0.0, 1e30])
    assert set(draw(row, SamplingParams(temperature=1e300), 400, seed=21)) == {0, 1, 2, 3}
