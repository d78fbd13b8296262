"""The random faults of bench/chaos.py: every ``gap_s`` (jittered) one of ``FAULTS``, SIGKILL.

A fault names roles, resolved when it fires: ``leader`` is the scheduler that holds the lease in
Redis (bench/failover.py's ``leader``), ``follower`` the other replica, ``decode`` one of the two
decode workers (drawn), ``nats`` one NATS node.  The supervisor restarts the services; nothing
restarts a NATS node, so the next NATS fault brings the dead node back instead of killing another
(the cluster never loses two of its three nodes), and ``restore`` does so after the soak.
With ``redis=True`` the one Redis is a fault too (``REDIS_FAULT``): killed, then started again (same
port and data, its AOF) by the next Redis fault or by ``restore``.  Without Redis no standby can take
the lease, so a leader killed meanwhile leaves the stack without one until Redis is back.  While
Redis is down the leader is found by its ``loraplex_scheduler_leader`` gauge instead of the lease.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import redis
from failover import leader
from failoverbench.stack import metric

from loraplex.tooling.nats_cluster import NatsCluster
from loraplex.tooling.servers import ServerProcess, start_redis
from loraplex.tooling.stack import Stack

SCHEDULERS = ("scheduler", "scheduler-1")  # loraplex up's names for --schedulers 2
DECODES = ("decode-0", "decode-1")
FAULTS: dict[str, tuple[str, ...]] = {
    "scheduler leader": ("leader",),
    "scheduler follower": ("follower",),
    "decode worker": ("decode",),
    "prefill worker": ("prefill-0",),
    "NATS node": ("nats",),
    "leader + decode worker": ("leader", "decode"),
    "decode + prefill worker": ("decode", "prefill-0"),
    "both decode workers": DECODES,
}
REDIS_FAULT = "Redis"


@dataclass
class Action:
    at: float  # seconds since the soak started
    fault: str
    what: str  # what was done: "killed scheduler-1 (pid 123)", "restarted nats-2", ...


class Chaos:
    def __init__(
        self, stack: Stack, cluster: NatsCluster, redis: ServerProcess, seed: int,
        redis_faults: bool = False,
    ) -> None:  # fmt: skip
        self.stack, self.cluster, self.redis = stack, cluster, redis
        self.redis_url = redis.url
        self.rng = random.Random(seed)
        self.actions: list[Action] = []
        self.faults = [*FAULTS, *([REDIS_FAULT] if redis_faults else [])]

    def lead(self) -> str | None:
        try:
            return leader(self.redis_url)
        except AssertionError:  # no lease now: a takeover
            return None
        except redis.RedisError:  # Redis down: the replica that says it leads (its gauge)
            urls = [(s, self.stack.status.get(s)) for s in SCHEDULERS]
            return next(
                (s for s, url in urls if url and metric(url, "loraplex_scheduler_leader") == 1),
                None,
            )

    def _resolve(self, role: str) -> str | None:
        if role == "leader":
            return self.lead()
        if role == "follower":
            lead = self.lead()
            return next((s for s in SCHEDULERS if s != lead), None) if lead else None
        if role == "decode":
            return self.rng.choice(DECODES)
        return role

    def _kill_services(self, roles: tuple[str, ...]) -> list[str]:
        names = [self._resolve(r) for r in roles]
        done = []
        for role, name in zip(roles, names, strict=True):
            if name is None:
                done.append(f"no {role} to kill (no scheduler leads)")
                continue
            svc = self.stack.service(name)
            if svc.proc is None or svc.proc.poll() is not None:
                done.append(f"{name} was down (the supervisor restarts it)")
                continue
            svc.proc.kill()  # SIGKILL
            done.append(f"killed {name} (pid {svc.proc.pid})")
        return done

    async def _nats(self) -> list[str]:
        down = [i for i, n in enumerate(self.cluster.nodes) if n.proc.poll() is not None]
        if not down:
            i = self.rng.randrange(len(self.cluster.nodes))
            self.cluster.kill(i)
            return [f"killed nats-{i}"]
        return [await self._restart_nats(down[0])]

    async def _restart_nats(self, i: int) -> str:
        try:
            await asyncio.to_thread(self.cluster.restart, i)
        except Exception as e:  # the bench goes on: quiesce retries
            return f"nats-{i} did not come back: {type(e).__name__}: {e}"
        return f"restarted nats-{i}"

    async def _redis(self) -> list[str]:
        if self.redis.proc.poll() is None:
            self.redis.proc.kill()
            self.redis.proc.wait()
            return ["killed redis"]
        return [await self._restart_redis()]

    async def _restart_redis(self) -> str:
        r = self.redis
        try:
            r.proc = (await asyncio.to_thread(start_redis, r.data_dir, r.port)).proc
        except Exception as e:  # the bench goes on: quiesce reports what is missing
            return f"redis did not come back: {type(e).__name__}: {e}"
        return "restarted redis"

    async def fire(self, fault: str, t0: float) -> Action:
        at = time.monotonic() - t0
        if fault == REDIS_FAULT:
            done = await self._redis()
        elif FAULTS[fault] == ("nats",):
            done = await self._nats()
        else:
            done = self._kill_services(FAULTS[fault])
        action = Action(at, fault, "; ".join(done))
        self.actions.append(action)
        print(f"{time.strftime('%H:%M:%S')} +{at:6.1f}s {fault}: {action.what}", flush=True)
        return action

    async def run(self, t0: float, seconds: float, gap_s: float) -> None:
        """One fault every ``gap_s`` x U(0.6, 1.4) seconds while ``seconds`` have not passed."""
        while True:
            wait = gap_s * self.rng.uniform(0.6, 1.4)
            if time.monotonic() + wait >= t0 + seconds:
                return
            await asyncio.sleep(wait)
            await self.fire(self.rng.choice(self.faults), t0)

    async def restore(self, t0: float) -> None:
        """Start every dead NATS node and a dead Redis again (the supervisor does the services)."""
        done = [await self._restart_nats(i) for i, n in enumerate(self.cluster.nodes)
                if n.proc.poll() is not None]  # fmt: skip
        if self.redis.proc.poll() is not None:
            done.append(await self._restart_redis())
        for what in done:
            self.actions.append(Action(time.monotonic() - t0, "quiesce", what))
            print(f"{time.strftime('%H:%M:%S')} quiesce: {what}", flush=True)
