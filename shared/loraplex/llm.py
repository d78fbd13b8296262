"""Offline batch inference in the style of vLLM: ``LLM(...).generate(prompts, params, lora=...)``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch

from loraplex.config import EngineConfig
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.logprobs import TokenLogprobs
from loraplex.errors import InvalidRequestError
from loraplex.lora.adapter import LoraAdapter
from loraplex.sampling_params import SamplingParams


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    lora: str | None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprobs] | None = None  # per token, with SamplingParams(logprobs=k)
    # Per prompt token, with SamplingParams(prompt_logprobs=k); the first token's is None.
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    # With finish_reason "error": why the request ended early (e.g. its adapter produced
    # non-finite logits); the other prompts of the batch are not affected.
    error: str | None = None


class LLM:
    def __init__(
        self,
        model_dir: str | Path,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        max_loras: int = 8,
        max_lora_rank: int = 64,
        **engine_options: object,
    ) -> None:
        config = EngineConfig.with_env_defaults(
            max_loras=max_loras, max_lora_rank=max_lora_rank, **engine_options
        )
        self.engine = LLMEngine(model_dir, config, dtype=dtype, device=device)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def add_lora(self, name: str, path: str | Path) -> LoraAdapter:
        return self.engine.add_lora(name, path)

    def remove_lora(self, name: str) -> None:
        self.engine.remove_lora(name)

    def generate(
        self,
        prompts: str | list[int] | Seq[str | list[int]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        lora: str | None | Seq[str | None] = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in prompt order.  A prompt the
        engine could not serve ends with ``finish_reason`` "error" and ``error`` set.

        ``prompts`` are strings (tokenized with the model's tokenizer) or token-id lists;
        ``sampling_params`` and ``lora`` are one value for all prompts or one per prompt.
        """
        if isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]  # type: ignore[list-item]
        n = len(prompts)
        params = _per_prompt(sampling_params or SamplingParams(), n, "sampling_params")
        loras = _per_prompt(lora, n, "lora")
        outputs: dict[str, RequestOutput] = {}
        order: list[str] = []
        try:
            for prompt, p, name in zip(prompts, params, loras, strict=False):
                ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
                rid = f"offline-{next(self._ids)}"
                self.engine.add_request(rid, ids, p, name)
                outputs[rid] = RequestOutput(rid, ids, name)
                order.append(rid)
            while self.engine.has_unfinished():
                for out in self.engine.step():
                    o = outputs[out.request_id]
                    o.token_ids.extend(out.new_token_ids)
                    o.text += out.new_text
                    if out.logprobs is not None:
                        o.logprobs = (o.logprobs or []) + out.logprobs
                    if out.prompt_logprobs is not None:
                        o.prompt_logprobs = [None, *out.prompt_logprobs]
                    if out.finished:
                        o.finish_reason, o.stop_reason = out.finish_reason, out.stop_reason
                        o.error = out.error
        except BaseException:
            for rid in order:
                self.engine.abort(rid)
            raise
        return [outputs[rid] for rid in order]

    def chat(
        self,
        messages: Seq[dict[str, Any]] | Seq[Seq[dict[str, Any]]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        lora: str | None | Seq[str | None] = None,
        *,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> list[RequestOutput]:
        """vLLM's ``LLM.chat``: one conversation (a list of ``{"role", "content"}`` messages) or
        several, rendered with the model's chat template (with ``tools`` and the template
        variables ``chat_template_kwargs``), then generated as ``generate`` does.  Answers also
        stop at the template's turn end (``<|im_end|>``), as the server's chat route does, so
        the two give the same tokens."""
        conversations = cast(
            "list[Seq[dict[str, Any]]]",
            [messages] if _is_conversation(messages) else list(messages),
        )
        if continue_final_message and add_generation_prompt:
            raise InvalidRequestError(
                "continue_final_message needs add_generation_prompt=False (as in vLLM)"
            )
        render = (add_generation_prompt, tools, chat_template_kwargs, continue_final_message)
        prompts = [self.tokenizer.encode_chat(list(c), *render) for c in conversations]
        params = _per_prompt(sampling_params or SamplingParams(), len(prompts), "sampling_params")
        ends = self.tokenizer.chat_stop_ids()
        with_ends = [
            replace(p, stop_token_ids=tuple(dict.fromkeys([*p.stop_token_ids, *ends])))
            for p in params
        ]
        return self.generate(prompts, with_ends, lora)


def _is_conversation(messages: Seq[Any]) -> bool:
    return bool(messages) and isinstance(messages[0], dict)


def _per_prompt(value, n: int, what: str) -> list:  # type: ignore[no-untyped-def]
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} has {len(value)} entries for {n} prompts")
        return list(value)
    return [value] * n
