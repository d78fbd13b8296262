"""Merged adapters on a worker (LoRAX's ``merged_adapters``): the worker builds the merge from
its components paged in from Redis, and its tokens are the offline engine's with the same merge;
a component replaced upstream makes the worker build it again; a merge it cannot build ends the
request with the error a tenant can act on."""

from __future__ import annotations

from pathlib import Path

from loraplex import LLM, SamplingParams
from loraplex.lora.adapter import load_adapter_dir
from loraplex.lora.merge import merge_adapters
from loraplex.lora.merge_spec import MergeSpec
from loraplex.model.config import ModelConfig
from tests.adapters.paging_helpers import PROMPTS, TENANT, Harness, Reference, until


def merged_reference(h: Harness, spec: MergeSpec, keys: list[str], prompt: list[int]) -> list[int]:
    """Greedy tokens of the offline engine with the merge of local adapters ``keys``."""
    cfg = ModelConfig.from_dir(h.demo.model_dir)
    parts = [load_adapter_dir(Path(h.adapter_dirs[k]), k, cfg, 64) for k in keys]
    merged = merge_adapters(spec.adapter_id(TENANT.name), spec, parts)
    llm = LLM(h.demo.model_dir, dtype="float32", device="cpu", max_loras=1, block_size=4)
    llm.engine.add_lora_adapter(merged)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    return llm.generate(prompt, params, lora=merged.name)[0].token_ids


async def test_a_merged_adapter_serves_the_offline_merge_and_follows_its_components(
    h: Harness, ref: Reference
) -> None:
    await h.register("a")
    await h.register("a2")
    spec = MergeSpec((h.name("a"), h.name("a2")), (0.6, 0.5), "dare_ties", 0.7)
    merged = spec.adapter_id(TENANT.name)
    gw = h.gateway
    async with h.worker() as w:
        rid = await gw.submit(w, PROMPTS[0], merged)
        got = await gw.tokens(rid)
        assert got == merged_reference(h, spec, ["a", "a2"], PROMPTS[0])
        assert got not in (ref("a", PROMPTS[0]), ref("a2", PROMPTS[0]))
        assert w.pager.current[merged].startswith(f"{merged}@m")
        assert w.pager.loads == 2  # its two components, fetched once each
        assert w.metrics._page_ins.labels(w.id, "both", "merged")._value.get() == 1

        # A second request finds it resident: nothing fetched again.
        assert await gw.tokens(await gw.submit(w, PROMPTS[1], merged)) == merged_reference(
            h, spec, ["a", "a2"], PROMPTS[1]
        )
        assert w.pager.loads == 2

        # A component replaced upstream: the merge is built again from the new weights.
        await h.register("a", as_key="a2", replace=True)
        await until(lambda: merged not in w.pager.current, what="the merge invalidated")
        got = await gw.tokens(await gw.submit(w, PROMPTS[0], merged))
        assert got == merged_reference(h, spec, ["a", "a"], PROMPTS[0])
        # Both components fetched again: a merge keeps only its result resident, not its parts.
        assert w.pager.loads == 4


async def test_merges_a_worker_cannot_build_fail_the_request_cleanly(h: Harness) -> None:
    await h.register("a")
    await h.register("b")
    gw = h.gateway
    different_ranks = MergeSpec((h.name("a"), h.name("b")), (1.0, 1.0)).adapter_id(TENANT.name)
    missing = MergeSpec((h.name("a"), h.name("c")), (1.0, 1.0)).adapter_id(TENANT.name)
    async with h.worker() as w:
        rid = await gw.submit(w, PROMPTS[0], different_ranks)
        await gw.wait(rid)
        err = gw.errors[rid]
        assert err.code == 400 and "ranks differ" in err.message
        assert TENANT.name not in err.message  # components by their bare names
        rid = await gw.submit(w, PROMPTS[0], missing)
        await gw.wait(rid)
        assert gw.errors[rid].code == 404
        # Nothing of the failed merges stays behind; the worker still serves.
        assert not w.pager._merged_into
        assert await gw.tokens(await gw.submit(w, PROMPTS[0], h.name("a")))
