"""Requests that use several adapters at once, end to end on the disaggregated stack: LoRAX's
``merged_adapters`` (two uploaded adapters merged per request with DARE-TIES, so the random drop
must come out the same on the prefill worker and on the decode worker the K/V moves to) gives the
offline engine's tokens with the same merge; an SGLang batch with one ``lora_path`` per prompt
gives each prompt its own adapter's answer."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from loraplex import SamplingParams
from loraplex.lora.adapter import load_adapter_dir
from loraplex.lora.merge import merge_adapters
from loraplex.lora.merge_spec import MergeSpec
from loraplex.model.config import ModelConfig
from loraplex.tenants import DEFAULT_TENANT
from loraplex.tooling.demo import ALL_MODULES, demo_model_spec, write_random_adapter
from tests.stack.e2e_common import offline_llm

PROMPT = "The quick brown fox"


def upload(base: str, name: str, path: Path) -> None:
    files = [
        ("files", (f, (path / f).read_bytes(), "application/octet-stream"))
        for f in ("adapter_config.json", "adapter_model.safetensors")
    ]
    r = httpx.post(f"{base}/v1/adapters", data={"name": name}, files=files, timeout=60)
    assert r.status_code == 201, r.text


def test_merged_adapters_through_the_stack(disagg_stack, tmp_path: Path) -> None:
    base = disagg_stack.urls["gateway"]
    dirs = [tmp_path / "merge-part-0", tmp_path / "merge-part-1"]
    for seed, d in enumerate(dirs, start=101):
        write_random_adapter(d, demo_model_spec(), rank=8, alpha=16, targets=ALL_MODULES, seed=seed)
        upload(base, d.name, d)
    spec = MergeSpec(
        tuple(f"{DEFAULT_TENANT}/{d.name}" for d in dirs), (0.6, 0.5), "dare_ties", 0.7
    )
    llm = offline_llm(disagg_stack)
    cfg = ModelConfig.from_dir(Path(disagg_stack.urls["model_dir"]))
    parts = [load_adapter_dir(d, d.name, cfg, 64) for d in dirs]
    merged = merge_adapters(spec.adapter_id(DEFAULT_TENANT), spec, parts)
    llm.engine.add_lora_adapter(merged)
    want = llm.generate(
        llm.tokenizer.encode(PROMPT), SamplingParams(temperature=0, max_tokens=8), lora=merged.name
    )[0]
    unmerged = llm.generate(
        llm.tokenizer.encode(PROMPT), SamplingParams(temperature=0, max_tokens=8), lora=None
    )[0]
    assert want.token_ids != unmerged.token_ids  # the merge changes the answer

    params = {
        "max_new_tokens": 8,
        "details": True,
        "merged_adapters": {
            "ids": [d.name for d in dirs],
            "weights": [0.6, 0.5],
            "merge_strategy": "dare_ties",
            "density": 0.7,
        },
    }
    body = {"inputs": PROMPT, "parameters": params}
    out = httpx.post(f"{base}/generate", json=body, timeout=60).json()
    assert [t["id"] for t in out["details"]["tokens"]] == want.token_ids
    assert out["generated_text"] == want.text
    streamed = httpx.post(f"{base}/generate_stream", json=body, timeout=60)
    events = [json.loads(x[len("data:") :]) for x in streamed.text.split("\n\n") if x.strip()]
    assert events[-1]["generated_text"] == want.text


def test_sglang_batch_with_an_adapter_per_prompt(disagg_stack) -> None:
    llm = offline_llm(disagg_stack)
    names = [a.name for a in disagg_stack.adapters][:3]
    loras = [names[0], None, names[1], names[2]]
    texts = ["The quick brown fox", "Once upon a time", "The quick brown fox", "Hello there"]
    greedy = SamplingParams(temperature=0, max_tokens=6)
    want = [llm.generate(t, greedy, lora=lo)[0].text for t, lo in zip(texts, loras, strict=True)]
    assert want[0] != want[2]  # the same prompt, another adapter: another answer
    body = {
        "text": texts,
        "lora_path": loras,
        "sampling_params": {"temperature": 0, "max_new_tokens": 6},
    }
    out = httpx.post(f"{disagg_stack.urls['gateway']}/generate", json=body, timeout=60).json()
    assert [o["text"] for o in out] == want
