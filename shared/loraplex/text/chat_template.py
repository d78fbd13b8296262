"""Render Hugging Face chat templates (jinja2, sandboxed)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from loraplex.errors import InvalidRequestError

# Used when the tokenizer has no chat_template: ChatML, the most widely recognised format.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=16)
def _compile(template: str):  # type: ignore[no-untyped-def]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def render_chat(template: str, messages: list[dict[str, Any]], **variables: Any) -> str:
    """Render ``messages`` (dicts with role/content); template errors become InvalidRequestError."""
    try:
        return _compile(template).render(messages=messages, **variables)
    except TemplateError as e:
        raise InvalidRequestError(f"chat template rejected the messages: {e}") from e
