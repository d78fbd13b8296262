"""How fast one Redis takes fairness-counter writes: the figure behind "beyond one scheduler".

Scheduler replicas that shared live counters would write every charge to Redis.  Measured on a
real ``redis-server`` (no persistence, loopback) for ``seconds`` each:

* ``HINCRBYFLOAT counters <tenant> <cost>`` from Python (redis-py), one per round trip and
  pipelined ``batch`` per round trip;
* ``EVALSHA`` of a script that charges a tenant and returns its new counter (what a replica
  would run to charge and read atomically), the same two ways;
* the server's own ceiling: ``redis-benchmark`` (C client, 50 connections, pipeline 16) for
  HINCRBYFLOAT.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loraplex.tooling.servers import start_redis

CHARGE = "return redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], ARGV[2])"


@dataclass(frozen=True)
class RedisRow:
    what: str
    per_s: float


def _rate(fn, seconds: float) -> float:  # type: ignore[no-untyped-def]
    n, t0 = 0, time.perf_counter()
    while (dt := time.perf_counter() - t0) < seconds:
        n += fn()
    return n / dt


def run_redis(seconds: float = 2.0, batch: int = 64, tenants: int = 10_000) -> list[RedisRow]:
    import redis

    rows: list[RedisRow] = []
    with tempfile.TemporaryDirectory(prefix="schedbench-redis-") as tmp:
        srv = start_redis(Path(tmp), appendonly=False)
        try:
            r = redis.Redis(port=srv.port)
            sha = r.script_load(CHARGE)
            k = iter(range(1 << 62))

            def one_incr() -> int:
                r.hincrbyfloat("c", f"t{next(k) % tenants}", 1.5)
                return 1

            def many_incr() -> int:
                p = r.pipeline(transaction=False)
                for _ in range(batch):
                    p.hincrbyfloat("c", f"t{next(k) % tenants}", 1.5)
                p.execute()
                return batch

            def one_eval() -> int:
                r.evalsha(sha, 1, "c", f"t{next(k) % tenants}", 1.5)
                return 1

            def many_eval() -> int:
                p = r.pipeline(transaction=False)
                for _ in range(batch):
                    p.evalsha(sha, 1, "c", f"t{next(k) % tenants}", 1.5)
                p.execute()
                return batch

            rows.append(
                RedisRow("HINCRBYFLOAT, 1 per round trip (redis-py)", _rate(one_incr, seconds))
            )
            rows.append(
                RedisRow(f"HINCRBYFLOAT, pipelined {batch} (redis-py)", _rate(many_incr, seconds))
            )
            rows.append(
                RedisRow("EVALSHA charge, 1 per round trip (redis-py)", _rate(one_eval, seconds))
            )
            rows.append(
                RedisRow(f"EVALSHA charge, pipelined {batch} (redis-py)", _rate(many_eval, seconds))
            )
            r.close()
            tool = shutil.which("redis-benchmark")
            if tool:
                out = subprocess.run(
                    [tool, "-p", str(srv.port), "-n", "200000", "-c", "50", "-P", "16", "-q",
                     "HINCRBYFLOAT", "c", "t1", "1.5"],
                    capture_output=True, text=True, timeout=120,
                ).stdout  # fmt: skip
                m = re.findall(r"([\d.]+) requests per second", out)
                if m:
                    rows.append(
                        RedisRow("HINCRBYFLOAT, redis-benchmark (C, 50 conns, -P 16)", float(m[-1]))
                    )
        finally:
            srv.stop()
    return rows


if __name__ == "__main__":
    for row in run_redis():
        print(f"{row.what}: {row.per_s:,.0f}/s")
