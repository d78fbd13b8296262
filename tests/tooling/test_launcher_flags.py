"""``loraplex up`` passes flags on to the services it starts (``up_flags.FORWARDED``): each one must be
the service's own flag (same type, choices, default, help), and every argv it builds for a child
must parse with that child's own parser (no flag it does not know, no abbreviation)."""

from __future__ import annotations

import argparse

import pytest

from loraplex.tooling.up_flags import (
    FORWARDED,
    PASSED_ON,
    UP_DEFAULTS,
    build_parser,
    gateway_argv,
    parse_up_args,
    scheduler_argv,
    store_argv,
    worker_argv,
)
from tests.deploy.service_flags import PARSERS, parse_command

# service name in FORWARDED -> the modules that run it (each has its own parser)
MODULES = {
    "worker": ("loraplex.prefill", "loraplex.decode"),
    "scheduler": ("loraplex.scheduler",),
    "gateway": ("loraplex.gateway",),
    "adapter-store": ("loraplex.adapter_store",),
}
COMMON = ["--nats-url", "nats://127.0.0.1:1", "--redis-url", "redis://127.0.0.1:2"]
EVERYTHING_SET = [
    "--host", "127.0.0.2", "--port", "8123", "--tenants", "tenants.yaml",
    "--max-num-seqs", "5", "--max-loras", "3", "--max-lora-rank", "16", "--num-kv-blocks", "9",
    "--max-model-len", "512", "--max-num-batched-tokens", "256", "--enforce-eager",
    "--no-enable-prefix-caching", "--fairness", "rpm", "--no-prefix-routing", "--rpm-limit", "7",
    "--gateway-timeout", "4",
    "--dtype", "float16", "--device", "cpu", "--adapters-root", "/srv/adapters",
]  # fmt: skip


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return parser._option_string_actions[flag]


def _signature(action: argparse.Action) -> dict[str, object]:
    """What must agree between ``loraplex up``'s flag and the service's (defaults apart)."""
    return {
        "kind": type(action).__name__,  # store, store_true, BooleanOptionalAction, ...
        "option_strings": sorted(action.option_strings),
        "type": action.type,
        "choices": None if action.choices is None else list(action.choices),
        "nargs": action.nargs,
        "const": action.const,
    }


def test_every_forwarded_flag_is_known_and_every_override_is_one() -> None:
    assert set(UP_DEFAULTS) <= set(FORWARDED)
    assert all(to and set(to) <= set(MODULES) for to in FORWARDED.values())
    up = build_parser(argparse.ArgumentParser())
    for flag in FORWARDED:
        assert flag in up._option_string_actions, f"loraplex up does not accept {flag}"


@pytest.mark.parametrize("flag", list(FORWARDED))
def test_a_forwarded_flag_is_the_services_own(flag: str) -> None:
    up = _action(build_parser(argparse.ArgumentParser()), flag)
    for service in FORWARDED[flag]:
        for module in MODULES[service]:
            parser = PARSERS[module]()
            assert flag in parser._option_string_actions, (
                f"loraplex up forwards {flag} to {module}, whose parser does not accept it"
            )
            theirs = _action(parser, flag)
            assert _signature(up) == _signature(theirs), f"{flag}: loraplex up vs {module}"
    # The first service defines it: its default (unless overridden on purpose) and its help.
    owner = _action(PARSERS[MODULES[FORWARDED[flag][0]][0]](), flag)
    assert up.default == UP_DEFAULTS.get(flag, owner.default), flag
    if flag in UP_DEFAULTS:
        assert UP_DEFAULTS[flag] != owner.default, f"{flag}: an override that changes nothing"
    assert (up.help or "").endswith(owner.help or ""), f"{flag}: {up.help!r} vs {owner.help!r}"


def _child_argvs(args: argparse.Namespace) -> dict[str, list[str]]:
    """What ``start_stack`` runs (``tooling/launcher.py``), by module."""
    worker = worker_argv(args, "/models/m", COMMON)
    return {
        "loraplex.adapter_store": store_argv(args, "/models/m", 8100, COMMON),
        "loraplex.scheduler": scheduler_argv(args, "scheduler", COMMON),
        "loraplex.prefill": ["--worker-id", "prefill-0", *worker],
        "loraplex.decode": ["--role", "both", "--worker-id", "decode-0", *worker],
        "loraplex.gateway": gateway_argv(args, "/models/m", COMMON, 8002),
    }


@pytest.mark.parametrize("up_flags", [[], EVERYTHING_SET], ids=["defaults", "everything-set"])
def test_every_child_argv_parses_and_carries_the_forwarded_values(up_flags: list[str]) -> None:
    args = parse_up_args(up_flags)
    for module, argv in _child_argvs(args).items():
        parsed = parse_command(module, argv)  # refuses unknown and abbreviated flags
        service = next(s for s, modules in MODULES.items() if module in modules)
        for flag, to in FORWARDED.items():
            if service in to:
                dest = _action(PARSERS[module](), flag).dest
                assert getattr(parsed, dest) == getattr(args, dest), f"{module} {flag}"


@pytest.mark.parametrize("up_flags", [[], EVERYTHING_SET], ids=["defaults", "everything-set"])
def test_a_flag_of_loraplex_up_reaches_a_service_only_forwarded_or_declared(
    up_flags: list[str],
) -> None:
    """A flag of ``loraplex up`` passed on by hand, outside ``FORWARDED``, would escape the checks
    above: it must be one ``PASSED_ON`` declares (a value up changes or uses itself first)."""
    up = build_parser(argparse.ArgumentParser())._option_string_actions
    for module, argv in _child_argvs(parse_up_args(up_flags)).items():
        names = {up[a].option_strings[0] for a in argv if a in up}  # --no-x: --x
        by_hand = names - set(FORWARDED)
        assert by_hand <= set(PASSED_ON), f"{module} gets {sorted(by_hand - set(PASSED_ON))}"


def test_the_gateway_url_brackets_an_ipv6_host_and_reaches_a_wildcard_on_loopback() -> None:
    from loraplex.tooling.launcher import _url_host

    assert _url_host("0.0.0.0") == "127.0.0.1" and _url_host("::") == "127.0.0.1"
    assert _url_host("127.0.0.1") == "127.0.0.1" and _url_host("10.1.2.3") == "10.1.2.3"
    assert _url_host("::1") == "[::1]" and _url_host("[::1]") == "[::1]"
    assert _url_host("fe80::1") == "[fe80::1]" and _url_host("gateway.local") == "gateway.local"
