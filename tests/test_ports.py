"""Ports handed to child servers stay out of the kernel's ephemeral range (where a client
connection's local port could take one before the child binds it) and are never repeated."""

from __future__ import annotations

import socket

from loraplex.tooling.ports import ephemeral_range, free_port, free_ports


def test_ports_are_outside_the_ephemeral_range_distinct_and_bindable() -> None:
    low, high = ephemeral_range()
    ports = free_ports(50) + [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert not any(low <= p <= high for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_port_in_use_is_never_handed_out(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    low, _ = ephemeral_range()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0 if low <= 12000 else low - 1500))
        held.listen()
        taken = held.getsockname()[1]
        draws = iter([taken, taken, taken + 1, taken + 2])
        monkeypatch.setattr("loraplex.tooling.ports.random.randint", lambda a, b: next(draws))
        got = free_ports(1)[0]
    assert got != taken
