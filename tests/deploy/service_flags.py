"""Each service's own argparse parser, by the module a container runs (`python -m MODULE`).

The compose file, the Dockerfile and the Helm chart are checked against these parsers: a flag
renamed in the code fails the deploy tests, not a container.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _worker(role: str) -> Callable[[], argparse.ArgumentParser]:
    def build() -> argparse.ArgumentParser:
        from loraplex.worker.settings import build_parser

        return build_parser(role)

    return build


def _gateway() -> argparse.ArgumentParser:
    from loraplex.gateway.__main__ import build_parser

    return build_parser()


def _scheduler() -> argparse.ArgumentParser:
    from loraplex.scheduler.settings import build_parser

    return build_parser()


def _adapter_store() -> argparse.ArgumentParser:
    from loraplex.adapter_store.__main__ import build_parser

    return build_parser()


def _cli() -> argparse.ArgumentParser:
    from loraplex.tooling.cli import build_parser

    return build_parser()


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "loraplex.gateway": _gateway,
    "loraplex.scheduler": _scheduler,
    "loraplex.prefill": _worker("prefill"),
    "loraplex.decode": _worker("decode"),
    "loraplex.adapter_store": _adapter_store,
    "loraplex": _cli,  # the console script (the image's CMD)
}


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


class ParseError(Exception):
    pass


def parse_command(module: str, args: list[str]) -> argparse.Namespace:
    """Parse ``args`` exactly as ``python -m module`` would, but refuse flag abbreviations
    (argparse accepts ``--max-num`` for ``--max-num-seqs``; a deploy file must spell flags out)."""
    parser = PARSERS[module]()
    known = option_strings(parser)
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            if flag not in known:
                raise ParseError(f"{module}: {flag} is not a flag of its parser")
    parser.exit_on_error = False
    try:
        return parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as e:
        raise ParseError(f"{module} {' '.join(args)}: {e}") from e


def flag_value(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None
