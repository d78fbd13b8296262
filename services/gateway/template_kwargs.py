"""vLLM's ``chat_template_kwargs``: the variables a request may pass to the chat template
(chat completions and ``/tokenize``), checked before any template runs."""

from __future__ import annotations

import re
from typing import Any

from loraplex.gateway.errors import InvalidParamError

TEMPLATE_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
RESERVED_TEMPLATE_VARIABLES = frozenset(
    {"messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "raise_exception"}
)
MAX_TEMPLATE_KWARGS = 32


def checked_template_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """``kwargs`` (None when empty), or a 400: names a template can read, none of its own."""
    if not kwargs:
        return None
    if len(kwargs) > MAX_TEMPLATE_KWARGS:
        raise InvalidParamError(
            f"at most {MAX_TEMPLATE_KWARGS} chat_template_kwargs", "chat_template_kwargs"
        )
    for name in kwargs:
        if not TEMPLATE_VARIABLE.match(name) or name in RESERVED_TEMPLATE_VARIABLES:
            raise InvalidParamError(
                f"chat_template_kwargs: {name[:64]!r} is not a variable a request may set "
                "(a name of letters, digits and '_', not one the server sets)",
                "chat_template_kwargs",
            )
    return kwargs
