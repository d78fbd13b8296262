"""Render Hugging Face chat templates (jinja2, sandboxed)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from loraplex.errors import InvalidRequestError

# ChatML turns, with tools in the Hermes format (as Qwen 2.5's template): the function specs in
# a system turn, past calls as <tool_call> blocks, tool results as <tool_response> user turns.
# Without tools, tool calls or "tool" turns it renders plain ChatML.
CHATML_WITH_TOOLS = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>user\n<tool_response>\n' + message['content'] + "
    "'\n</tool_response><|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{{- '\n<tool_call>\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' + "
    "(call['function']['arguments'] | tojson) + '}\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# Used when the tokenizer has no chat_template: ChatML, the most widely recognised format.
DEFAULT_CHAT_TEMPLATE = CHATML_WITH_TOOLS


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' ``tojson`` (plain ``json.dumps``), not jinja's, which escapes HTML
    characters: templates render tools and call arguments with it."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=16)
def _compile(template: str):  # type: ignore[no-untyped-def]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = _tojson
    return env.from_string(template)


def continued(rendered: str, messages: list[dict[str, Any]]) -> str:
    """transformers' and vLLM's ``continue_final_message``: the rendered chat cut right after the
    last message's content, so the model goes on writing that message (a prefilled answer)."""
    final = messages[-1].get("content") if messages else None
    if isinstance(final, list):  # content parts: the last text part, as transformers takes it
        texts = [p.get("text") for p in final if isinstance(p, dict)]
        final = next((t for t in reversed(texts) if isinstance(t, str)), None)
    if not isinstance(final, str) or not final.strip():
        raise InvalidRequestError(
            "continue_final_message needs a last message with text content to continue"
        )
    for text in (final, final.strip()):  # some templates trim messages (Llama 3.1)
        at = rendered.rfind(text)
        if at >= 0:
            return rendered[: at + len(text)]
    raise InvalidRequestError(
        "continue_final_message: the chat template does not render the last message's content"
    )


def render_chat(template: str, messages: list[dict[str, Any]], **variables: Any) -> str:
    """Render ``messages`` (dicts with role/content); template errors become InvalidRequestError."""
    try:
        return _compile(template).render(messages=messages, **variables)
    except TemplateError as e:
        raise InvalidRequestError(f"chat template rejected the messages: {e}") from e
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError) as e:
        # A template's own expression failed on what the request sent (a value of another type
        # in a message or a template variable): the request's fault, not the server's.
        raise InvalidRequestError(f"chat template failed on the messages: {e}") from e
