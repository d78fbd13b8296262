"""Offline batch inference in the style of vLLM: ``LLM(...).generate(prompts, params, lora=...)``.

vLLM's spelling works too: ``LLM(model=..., enable_lora=True)``, prompts as text, token ids or
``{"prompt": ...}`` / ``{"prompt_token_ids": ...}``, ``lora_request=LoRARequest(name, id, path)``
(loaded from its path on first use), and ``out.outputs[0].text`` on the results."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch

from loraplex.config import EngineConfig
from loraplex.engine.llm_engine import LLMEngine
from loraplex.errors import InvalidRequestError
from loraplex.lora.adapter import LoraAdapter
from loraplex.lora.request import LoRARequest
from loraplex.outputs import CompletionOutput, RequestOutput
from loraplex.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "LoRARequest", "RequestOutput"]
Prompt = str | list[int] | dict[str, Any]  # text, token ids, or vLLM's TextPrompt/TokensPrompt


class LLM:
    def __init__(
        self,
        model: str | Path,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        max_loras: int = 8,
        max_lora_rank: int = 64,
        enable_lora: bool = True,  # vLLM's switch: adapters are always on here
        **engine_options: object,
    ) -> None:
        config = EngineConfig.with_env_defaults(
            max_loras=max_loras, max_lora_rank=max_lora_rank, **engine_options
        )
        self.engine = LLMEngine(model, config, dtype=dtype, device=device)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()
        self._requested: dict[str, str] = {}  # lora_name -> the lora_path it was loaded from

    def add_lora(self, name: str, path: str | Path) -> LoraAdapter:
        return self.engine.add_lora(name, path)

    def remove_lora(self, name: str) -> None:
        self.engine.remove_lora(name)

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        lora: str | None | Seq[str | None] = None,
        *,
        lora_request: LoRARequest | None | Seq[LoRARequest | None] = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in prompt order.  A prompt the
        engine could not serve ends with ``finish_reason`` "error" and ``error`` set.

        ``prompts`` are strings (tokenized with the model's tokenizer), token-id lists, or
        vLLM's ``{"prompt": ...}`` / ``{"prompt_token_ids": ...}``; ``sampling_params`` and the
        adapter (``lora``, a name added with ``add_lora``, or vLLM's ``lora_request``) are one
        value for all prompts or one per prompt.
        """
        if isinstance(prompts, (str, dict)) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]  # type: ignore[list-item]
        n = len(prompts)
        params = _per_prompt(sampling_params or SamplingParams(), n, "sampling_params")
        if lora_request is not None:
            if lora is not None:
                raise ValueError("name the adapter with lora or lora_request, not both")
            lora = [self._requested_lora(r) for r in _per_prompt(lora_request, n, "lora_request")]
        loras = _per_prompt(lora, n, "lora")
        outputs: dict[str, RequestOutput] = {}
        order: list[str] = []
        try:
            for prompt, p, name in zip(prompts, params, loras, strict=False):
                text, ids = self._prompt(prompt)
                rid = f"offline-{next(self._ids)}"
                self.engine.add_request(rid, ids, p, name)
                outputs[rid] = RequestOutput(rid, ids, name, prompt=text)
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
        lora_request: LoRARequest | None | Seq[LoRARequest | None] = None,
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
        return self.generate(prompts, with_ends, lora, lora_request=lora_request)

    def _prompt(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        """(its text if given as text, its token ids)."""
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), list(prompt["prompt_token_ids"])
            if "prompt" not in prompt:
                raise ValueError("a dict prompt holds 'prompt' or 'prompt_token_ids'")
            prompt = prompt["prompt"]
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        return None, list(prompt)

    def _requested_lora(self, request: LoRARequest | None) -> str | None:
        """The adapter name a vLLM ``LoRARequest`` means, loaded from its path the first time
        (and again when the same name comes with another path)."""
        if request is None:
            return None
        name, path = request.lora_name, request.lora_path
        if path and (self._requested.get(name) != path or name not in self.engine.adapters):
            self.add_lora(name, path)
            self._requested[name] = path
        elif name not in self.engine.adapters:
            raise ValueError(f"LoRARequest {name!r} has no lora_path and was never added")
        return name


def _is_conversation(messages: Seq[Any]) -> bool:
    return bool(messages) and isinstance(messages[0], dict)


def _per_prompt(value, n: int, what: str) -> list:  # type: ignore[no-untyped-def]
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} has {len(value)} entries for {n} prompts")
        return list(value)
    return [value] * n
