"""Free loopback ports for servers a launcher or test is about to start.

A port found by binding port 0 comes from the kernel's ephemeral range, which outgoing
connections also draw from: between the check and the child's own bind, a NATS or Redis client
connection could take it as its local port, and the child would fail with "Address already in
use" (seen in CI: a decode worker's status listener).  So ports are drawn below that range, at
random, checked by a bind, and never handed out twice by one process.
"""

from __future__ import annotations

import random
import socket
import threading

_FALLBACK_EPHEMERAL = (32768, 60999)
_LOWEST = 10000
_given: set[int] = set()
_lock = threading.Lock()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux), or the Linux default elsewhere."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return _FALLBACK_EPHEMERAL


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports outside the ephemeral range, none given out before here."""
    low, high = ephemeral_range()
    # below the range when there is room; a range that starts low (tuned hosts): above it
    bottom, top = (_LOWEST, low - 1) if low > _LOWEST + 1000 else (high + 1, 65535)
    ports: list[int] = []
    with _lock:
        for _ in range(200 * n):
            if len(ports) == n:
                break
            port = random.randint(bottom, top)
            if port not in _given and _bindable(port):
                _given.add(port)
                ports.append(port)
    if len(ports) < n:
        raise RuntimeError(f"no {n} free loopback port(s) between {bottom} and {top}")
    return ports


def free_port() -> int:
    return free_ports(1)[0]
