"""Every flag's ``--help`` says its default (or that it is required), for each service and for
``loraplex up``: an operator reads defaults there, not in the source."""

from __future__ import annotations

import argparse
import re

import pytest

from loraplex.adapter_store.__main__ import build_parser as store_parser
from loraplex.cli_help import DefaultsHelpFormatter
from loraplex.gateway.__main__ import build_parser as gateway_parser
from loraplex.scheduler.settings import build_parser as scheduler_parser
from loraplex.tooling.cli import build_parser as cli_parser
from loraplex.worker.settings import build_parser as worker_parser


def _up_parser() -> argparse.ArgumentParser:
    sub = next(a for a in cli_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["up"]


PARSERS = {
    "gateway": gateway_parser,
    "adapter-store": store_parser,
    "scheduler": scheduler_parser,
    "prefill": lambda: worker_parser("prefill"),
    "decode": lambda: worker_parser("decode"),
    "loraplex up": _up_parser,
}


def _flag_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's entry as ``--help`` prints it, by its first flag, whitespace joined."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in parser.format_help().splitlines():
        if line.startswith("  -"):
            current = entries.setdefault(line.split()[0].rstrip(","), [])
        elif not line.startswith("   "):
            current = None  # a section title or a blank line
        if current is not None:
            current.append(line.strip())
    return {flag: " ".join(lines) for flag, lines in entries.items() if flag not in ("-h",)}


@pytest.mark.parametrize("name", list(PARSERS))
def test_every_flag_says_its_default(name):
    parser = PARSERS[name]()
    assert isinstance(parser._get_formatter(), DefaultsHelpFormatter), name
    flags = {a.option_strings[0] for a in parser._actions if a.option_strings} - {"-h"}
    helps = _flag_helps(parser)
    assert set(helps) == flags, f"{name} --help lists {sorted(helps)}, the parser {sorted(flags)}"
    silent = {
        flag: text
        for flag, text in helps.items()
        if not re.search(r"default|required", text, re.IGNORECASE)
    }
    assert silent == {}, f"{name} --help: flags that do not say their default: {silent}"
    assert "(default: None)" not in parser.format_help(), name


def test_unset_flag_shows_the_environment_variable_it_falls_back_to(monkeypatch):
    monkeypatch.setenv("LORAPLEX_NATS_URL", "nats://10.0.0.7:4222")
    helps = _flag_helps(gateway_parser())
    assert "nats://10.0.0.7:4222" in helps["--nats-url"], helps["--nats-url"]


def test_a_percent_sign_in_a_value_does_not_break_help(monkeypatch):
    monkeypatch.setenv("LORAPLEX_REDIS_PREFIX", "lp%x")
    assert "lp%x" in gateway_parser().format_help()
