"""vLLM request fields this server does not serve, refused with a 400 that names them rather than
dropped: a client that sends one expects it to change the answer.  Fields nobody's answer depends
on (``kv_transfer_params``, ``vllm_xargs``, ``mm_processor_kwargs``, ...) are still ignored, as
other OpenAI clients' extras are.  Plain Python."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loraplex.gateway.errors import InvalidParamError

# field -> why; refused when sent with a value other than null or false
REFUSED: dict[str, str] = {
    "logits_processors": "custom logits processors are not run here (they are code from a request)",
    "prompt_embeds": "prompt embeddings are not supported: send text or token ids",
    "documents": "documents are not passed to the chat template: put them in the messages",
    "echo": "echo is not supported on chat (it is on /v1/completions)",
    "multi_modal_data": "images, audio and video are not supported: this server serves text",
}


def refuse_unserved(extra: Mapping[str, Any] | None) -> None:
    """InvalidParamError for the first refused field among a body's undeclared ones."""
    for name, value in (extra or {}).items():
        if name in REFUSED and value is not None and value is not False:
            raise InvalidParamError(f"{name}: {REFUSED[name]}", name)
