"""A Hugging Face tokenizer read from ``tokenizer.json`` + ``tokenizer_config.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from loraplex.errors import ModelLoadError
from loraplex.text.chat_template import DEFAULT_CHAT_TEMPLATE, continued, render_chat

CHAT_END_TOKEN = "<|im_end|>"  # ChatML's turn end
LONG = 16384  # characters or ids from which the batch calls are used (they release the GIL)


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json stores special tokens as strings or as {"content": ...} objects.
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, model_dir: str | Path) -> None:
        root = Path(model_dir)
        path = root / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{root}: no tokenizer.json (only fast tokenizers are supported)")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise ModelLoadError(f"{path}: cannot load tokenizer ({e})") from e
        cfg_path = root / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        template = cfg.get("chat_template")
        # Named templates: "default", and "tool_use" for requests with tools (as transformers).
        self.tool_chat_template: str | None = None
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template, self.tool_chat_template = named.get("default"), named.get("tool_use")
        jinja_file = root / "chat_template.jinja"
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text()
        self.chat_template: str | None = template
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        self.bos_token_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        self._texts: dict[int, str] = {}  # token_text's: at most one entry per vocabulary id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if len(text) < LONG:
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        # The batch call lets go of the GIL while it works (the single one holds it: 5.4 s
        # for a 3.9 MB prompt, during which a gateway answered nobody, even from a thread).
        return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def token_text(self, token_id: int) -> str:
        """One token's text on its own, special tokens included (as logprobs show tokens),
        decoded once per id: prompt logprobs of a long prompt ask for ~20 per position."""
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self._tok.decode([token_id], skip_special_tokens=False)
        return text

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if len(ids) < LONG:
            return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        return self._tok.decode_batch([ids], skip_special_tokens=skip_special_tokens)[0]

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def special_token_id(self, token: str) -> int | None:
        """The id of ``token`` when the vocabulary has it as one token, else None."""
        ids = self.encode(token, add_special_tokens=False)
        if len(ids) == 1 and self.id_to_token(ids[0]) == token:
            return ids[0]
        return None

    def chat_stop_ids(self) -> tuple[int, ...]:
        """Token ids that end a chat answer besides EOS: ChatML's ``<|im_end|>`` (the default
        template ends turns with it; a model's generation_config may stop only on ``</s>``)."""
        end = self.special_token_id(CHAT_END_TOKEN)
        return (end,) if end is not None else ()

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
        continue_final_message: bool = False,
    ) -> str:
        """Render messages (and the ``tools`` they may call, OpenAI's function specs) with the
        model's template, or ``DEFAULT_CHAT_TEMPLATE`` when it has none.  ``template_kwargs``
        are more template variables (vLLM's ``chat_template_kwargs``: ``enable_thinking``...);
        they never replace these.  ``continue_final_message`` (with ``add_generation_prompt``
        false) ends the text inside the last message, for the model to continue it."""
        template = (tools and self.tool_chat_template) or self.chat_template
        variables = {k: v for k, v in (template_kwargs or {}).items() if k != "messages"}
        variables.update(
            add_generation_prompt=add_generation_prompt,
            tools=tools or None,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )
        rendered = render_chat(template or DEFAULT_CHAT_TEMPLATE, messages, **variables)
        return continued(rendered, messages) if continue_final_message else rendered

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
        continue_final_message: bool = False,
    ) -> list[int]:
        # The template already holds any BOS it wants, as in transformers' apply_chat_template.
        text = self.apply_chat_template(
            messages, add_generation_prompt, tools, template_kwargs, continue_final_message
        )
        return self.encode(text, add_special_tokens=False)
