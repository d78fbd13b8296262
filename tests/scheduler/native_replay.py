"""A seeded scheduling replay, printed as JSON: ``python tests/scheduler/native_replay.py SEED``.

Drives every compiled module the way the scheduler service does (enqueue, pick, place with
prefix affinity, admit, commit, record, usage reports, finish, release, cancel, heartbeats that
move adapters, drain and restart workers, snapshot and restore) and prints each decision and the
final state.  ``test_native.py`` runs it interpreted and compiled and compares the two.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import replace

from loraplex.native import is_compiled
from loraplex.protocol import WorkerHeartbeat
from loraplex.scheduler.policies.base import QueuedRequest
from loraplex.scheduler.policies.registry import make_policy, make_reference_policy
from loraplex.scheduler.prefix_affinity import PrefixAffinity
from loraplex.scheduler.workers import WorkerRegistry

ADAPTERS = [f"a{i}" for i in range(12)]


def replay(seed: int, policy_name: str, steps: int = 4000) -> dict:
    rng = random.Random(seed)
    reg = WorkerRegistry(3.0, prefix_balance=0.25, seed=seed)
    for i in range(40):
        role = rng.choice(["both", "both", "prefill", "decode"])
        hb = WorkerHeartbeat(
            f"w{i:03d}", role, 0, rng.choice([40, 400]), 16, 0, 0, rng.choice([4, 8]),
            rng.sample(ADAPTERS, rng.randint(0, 4)),
        )  # fmt: skip
        reg.heartbeat(hb, 0.0)
    aff = PrefixAffinity(capacity_per_worker=64)
    weights = {f"t{k}": rng.choice([0.5, 1.0, 2.0]) for k in range(0, 60, 7)}
    options = {"predict_output": True} if policy_name in ("vtc", "lcf") else {}
    policy = make_policy(policy_name, weights, **options)
    tenants = [f"t{k}" for k in range(60)]
    systems = [[10_000 * s + i for i in range(48)] for s in range(5)]
    running: list[tuple[str, str, str, str, int]] = []  # id, tenant, prefill, decode, tokens
    out: list[list] = []
    now, next_id = 0.0, 0
    for step in range(steps):
        now += 0.01
        r = rng.random()
        if r < 0.35:
            tenant = rng.choice(tenants)
            prompt_len = rng.randint(1, 120)
            req = QueuedRequest(
                f"r{next_id}", tenant, prompt_len, rng.randint(1, 64), now, rng.choice([None, *ADAPTERS])
            )  # fmt: skip
            next_id += 1
            policy.enqueue(req, now)
        elif r < 0.40 and next_id:
            policy.cancel(f"r{rng.randrange(next_id)}")
        elif r < 0.43:  # a worker's heartbeat: adapters paged, drained, or back
            w = reg.workers[f"w{rng.randrange(40):03d}"]
            hb = replace(w.hb, adapters=rng.sample(ADAPTERS, rng.randint(0, 4)),
                         draining=rng.random() < 0.2)  # fmt: skip
            reg.heartbeat(hb, now)
        elif running and r < 0.56:
            rid, tenant, prefill, decode, _ = running.pop(rng.randrange(len(running)))
            n = rng.randint(0, 64)
            policy.on_output_tokens(tenant, rid, n)
            policy.on_finish(rid, n + rng.randint(0, 3))
            reg.release(prefill, rid)
            if decode:
                reg.release(decode, rid)
        else:
            q = policy.pick(now)
            if q is None:
                continue
            prompt = systems[int(q.tenant[1:]) % 5][: q.input_tokens]
            prompt = prompt + [step] * max(0, q.input_tokens - len(prompt))
            view = aff.cached_blocks(q.adapter, prompt)
            total = q.input_tokens + q.max_tokens
            placed = reg.place(q.adapter, q.input_tokens, total, view)
            if placed is None:
                out.append(["wait", q.request_id])
                continue
            policy.admit(q, now)
            reg.commit(placed.prefill, q.request_id, total)
            if placed.decode:
                reg.commit(placed.decode, q.request_id, total)
            aff.record(placed.prefill, view.keys(), reg.workers[placed.prefill].total_blocks)
            running.append((q.request_id, q.tenant, placed.prefill, placed.decode, total))
            out.append([q.request_id, placed.prefill, placed.decode])
    snapshot = policy.snapshot()
    twin = make_reference_policy(policy_name, weights, **options)
    twin.restore(snapshot)
    return {
        "decisions": out,
        "counters": {k: round(v, 9) for k, v in sorted(policy.counters().items())},
        "snapshot": json.loads(json.dumps(snapshot, sort_keys=True, default=str)),
        "loads": {w: [s.load, s.committed] for w, s in sorted(reg.workers.items())},
        "affinity_keys": len(aff),
        "restored_backlog": twin.backlogged(),
        "restored_pick": getattr(twin.pick(now), "request_id", None),
    }


def main() -> None:
    seed = int(sys.argv[1])
    result = {name: replay(seed, name) for name in ("vtc", "lcf", "fcfs", "rpm")}
    modules = ["placement", "prefix_affinity", "workers", "worker_state", "worker_index",
               "policies.vtc", "policies.base", "policies.backlog_heap"]  # fmt: skip
    result["compiled"] = {m: is_compiled(f"loraplex.scheduler.{m}") for m in modules}
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
