"""A service flag as data: defined once in the service's settings module, added to the service's
own parser and reused by ``loraplex up`` for the flags it passes on (type, choices, default and
help then cannot drift apart), and turned back into argv for the child process."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from loraplex.env import EnvVar


@dataclass(frozen=True)
class Flag:
    """One ``--flag``: its name and the keywords of ``ArgumentParser.add_argument``."""

    name: str
    options: Mapping[str, Any]

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")

    def add_to(
        self, parser: argparse.ArgumentParser, *, help_prefix: str = "", **overrides: Any
    ) -> argparse.Action:
        """Add to ``parser``; ``overrides`` replace keywords (``loraplex up``'s own default)."""
        options = {**self.options, **overrides}
        if help_prefix:
            text = options.get("help")
            options["help"] = f"{help_prefix}: {text}" if text else help_prefix
        return parser.add_argument(self.name, **options)

    def argv(self, value: object) -> list[str]:
        """The argv that gives a child process ``value`` for this flag (none for ``None``)."""
        action = self.options.get("action")
        if action == "store_true":
            return [self.name] if value else []
        if action is argparse.BooleanOptionalAction:
            return [self.name if value else "--no-" + self.name.removeprefix("--")]
        if value is None:
            return []
        return [self.name, str(value)]


def checked(
    convert: Callable[[str], float], accept: Callable[[float], bool], wanted: str
) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert`` the text, then refuse a value ``accept`` rejects with
    "<raw> is not <wanted>" (argparse prints it with the flag's name and exits 2)."""

    def parse(raw: str) -> Any:
        try:
            value = convert(raw)
        except ValueError:
            kind = "a whole number" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"{raw!r} is not {kind}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{raw} is not {wanted}")
        return value

    return parse


def flag(name: str, **options: Any) -> Flag:
    return Flag(name, MappingProxyType(options))


def by_name(flags: Iterable[Flag]) -> dict[str, Flag]:
    return {f.name: f for f in flags}


def add_flags(parser: argparse.ArgumentParser, flags: Iterable[Flag]) -> argparse.ArgumentParser:
    for f in flags:
        f.add_to(parser)
    return parser


def status_listener_flags(
    host: EnvVar[str], port: EnvVar[int], *, host_note: str = "", port_note: str = ""
) -> tuple[Flag, Flag]:
    """``--metrics-host`` and ``--metrics-port`` of the small /health, /ready, /metrics listener
    (scheduler, workers), defaulting to the given variables."""
    return (
        flag(
            "--metrics-host",
            default=host.get(),
            help=f"address of the /health, /ready and /metrics listener{host_note} "
            f"(default: %(default)s) [{host.name}]",
        ),
        flag(
            "--metrics-port",
            type=int,
            default=port.get(),
            help=f"port of that listener{port_note}; 0: none (default: %(default)s) [{port.name}]",
        ),
    )
