"""``--help`` that shows every flag's default, for the services and ``loraplex up``.

argparse's ``ArgumentDefaultsHelpFormatter`` appends ``(default: %(default)s)``, which reads
``(default: None)`` for the many flags whose real default comes from a ``LORAPLEX_*`` variable
when the flag is unset.  This formatter leaves a help text that already says its default (or that
the flag is required) as it is, appends the argparse default otherwise, and for a ``None`` default
whose help names a registered variable (``[LORAPLEX_NATS_URL]``) shows that variable's value now,
which is what the service will use.  A ``None`` default with neither is left alone: its help must
say what an unset flag means (``tests/test_cli_help.py`` holds every parser to that).
"""

from __future__ import annotations

import argparse
import copy
import re

from loraplex import env

_ENV_NAME = re.compile(r"\[(LORAPLEX_[A-Z0-9_]+)\]")
_SAYS_DEFAULT = re.compile(r"default|required", re.IGNORECASE)
_BY_NAME = {var.name: var for var in env.REGISTRY}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    def _format_action(self, action: argparse.Action) -> str:
        # argparse prints nothing after a flag without help; such a flag still has a default.
        if action.help is None and action.option_strings:
            action = copy.copy(action)
            action.help = ""
            action.help = self._get_help_string(action) or None
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = (action.help or "").strip()
        if action.help is argparse.SUPPRESS or _SAYS_DEFAULT.search(text):
            return action.help
        if action.required:
            return f"{text} (required)".strip()
        if not action.option_strings and action.nargs in (None, 1):
            return action.help  # a plain positional argument has no default
        if action.default is argparse.SUPPRESS:
            return action.help
        if action.default is not None:
            return f"{text} (default: %(default)s)".strip()
        named = _ENV_NAME.search(text)
        var = _BY_NAME.get(named.group(1)) if named else None
        if var is None:
            return action.help  # the help must say what an unset flag means
        try:
            value = var.get()
        except ValueError:  # a malformed value: the service says so when it starts
            value = var.default
        shown = repr(value) if value != "" else "unset"
        # ``%`` is argparse's format character: a value holding one must not break --help.
        return f"{text} (default: {shown.replace('%', '%%')})".strip()
