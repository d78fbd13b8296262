"""The three systems: loraplex (one mixed batch), HF transformers + PEFT, a per-adapter loop."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from loraplex import LLM, SamplingParams

from .workload import RANK, Tokens

if TYPE_CHECKING:
    from .options import Args

PAD_ID = 0  # the demo tokenizer's <s>; only ever under attention_mask = 0


def build_loraplex(model_dir: Path, paths: dict[str, Path], args: Args) -> LLM:
    llm = LLM(
        model_dir,
        dtype="float32",
        device="cpu",
        max_loras=max(args.adapters),
        max_lora_rank=RANK,
        max_num_seqs=args.requests,
        max_model_len=args.prompt_len + args.output_len + 16,
    )
    for name, path in paths.items():
        llm.add_lora(name, path)
    return llm


def run_loraplex(llm: LLM, prompts: Tokens, loras: list[str], output_len: int) -> Tokens:
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    return [o.token_ids for o in llm.generate(prompts, params, lora=loras)]


def run_loop(llm: LLM, prompts: Tokens, loras: list[str], output_len: int) -> Tokens:
    """One generate() per adapter, in adapter order; results go back to request order."""
    out: Tokens = [[] for _ in prompts]
    for name in dict.fromkeys(loras):
        rows = [i for i, lo in enumerate(loras) if lo == name]
        tokens = run_loraplex(llm, [prompts[i] for i in rows], [name] * len(rows), output_len)
        for i, toks in zip(rows, tokens, strict=True):
            out[i] = toks
    return out


def build_hf(model_dir: Path, paths: dict[str, Path]) -> torch.nn.Module:
    """One PeftModel holding every adapter side by side."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    items = iter(paths.items())
    first, first_path = next(items)
    model = PeftModel.from_pretrained(base, str(first_path), adapter_name=first)
    for name, path in items:
        model.load_adapter(str(path), adapter_name=name)
    # No EOS for generate(): an EOS it knows would be masked out by min_new_tokens, while loraplex's
    # ignore_eos may pick it (and go on), so greedy outputs would differ wherever EOS is the argmax.
    # (An eos_token_id=None in the call's GenerationConfig is filled back in from this default.)
    model.generation_config.eos_token_id = None
    return model.eval()


def left_pad(prompts: Tokens, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both [B, max_len], prompts aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids, mask


@torch.inference_mode()
def run_hf(model: torch.nn.Module, prompts: Tokens, loras: list[str], output_len: int) -> Tokens:
    """Whole batch in one generate() call, left padded (equal-length prompts: no pad tokens).

    ``build_hf`` cleared the model's EOS, so greedy picks are never masked (what loraplex's
    ``ignore_eos`` does) and exactly ``output_len`` tokens come back.
    """
    from transformers import GenerationConfig

    ids, mask = left_pad(prompts, PAD_ID)
    config = GenerationConfig(
        max_new_tokens=output_len,
        min_new_tokens=output_len,
        do_sample=False,
        pad_token_id=PAD_ID,
    )
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        adapter_names=loras,
        generation_config=config,
    )
    return out[:, ids.shape[1] :].tolist()
