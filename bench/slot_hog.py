"""One tenant holding every batch slot (or every adapter slot): what another tenant waits, with
preemption off and on, in the same run.

    python bench/slot_hog.py [--max-tokens 400] [--write-docs]

A stack of one prefill and one decode worker (the demo model, CPU; ``loraplex up``'s 32 slots)
and two tenants.  Tenant ``hog`` sends two completions with ``n=16`` (32 sequences, every batch
slot of the decode worker; the red team's case, 2026-12-08), then tenant ``canary`` sends a
4-token completion every ``--interval`` seconds until the hog's requests end.  The second case
pins both adapter slots (``--max-loras 2``): the hog streams on two adapters, the canary asks for
a third.  Each case runs with ``--preempt-after 0`` (no preemption: the behaviour before) and with
the default 2 s, on fresh stacks.  Reported: the canaries' latency and errors, the hog's time and
whether every one of its sequences completed, and the preemptions the scheduler counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, publish, today  # noqa: E402

from loraplex.tooling.launcher import Stack, start_stack  # noqa: E402
from loraplex.tooling.up_flags import parse_up_args  # noqa: E402

SECTION = "One tenant holding every slot: preemption off and on (bench/slot_hog.py)"
KEYS = {"hog": "sk-bench-hog", "canary": "sk-bench-canary"}


def _auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def hog(base: str, body: dict[str, Any], out: list, started: threading.Event) -> None:
    """One streamed request of the hog; ``out`` gets how many of its choices finished."""
    finished: set[int] = set()
    with (
        httpx.Client(base_url=base, headers=_auth("hog"), timeout=900) as c,
        c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r,
    ):
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            started.set()
            for choice in json.loads(line[6:]).get("choices", []):
                if choice.get("finish_reason"):
                    finished.add(choice["index"])
    out.append(len(finished))


def run_case(flags: list[str], bodies: list[dict], canary: dict, interval: float) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="loraplex-slot-hog-") as tmp:
        tenants = Path(tmp) / "tenants.json"
        tenants.write_text(json.dumps({"tenants": [
            {"name": t, "api_key": k} for t, k in KEYS.items()]}))  # fmt: skip
        stack = Stack(Path(tmp) / "run")
        try:
            base, _, adapters = start_stack(
                parse_up_args([*flags, "--tenants", str(tenants)]), stack
            )
            model = httpx.get(base + "/v1/models", headers=_auth("hog"), timeout=30).json()
            names = [model["data"][0]["id"], *(x.name for x in adapters)]
            fill = {"base": names[0], "a0": names[1], "a1": names[2], "a2": names[3]}
            done: list[int] = []
            starts = [threading.Event() for _ in bodies]
            t0 = time.perf_counter()
            threads = [
                threading.Thread(target=hog, args=(base, {**b, "model": fill[b["model"]]}, done, e))
                for b, e in zip(bodies, starts, strict=True)
            ]
            for th in threads:
                th.start()
            for e in starts:
                e.wait(120)
            lat: list[tuple[float, int]] = []
            with httpx.Client(base_url=base, headers=_auth("canary"), timeout=300) as c:
                body = {**canary, "model": fill[canary["model"]]}
                while any(th.is_alive() for th in threads):
                    t = time.perf_counter()
                    r = c.post("/v1/completions", json=body)
                    lat.append((time.perf_counter() - t, r.status_code))
                    time.sleep(interval)
            for th in threads:
                th.join()
            took = time.perf_counter() - t0
            metrics = httpx.get(stack.status["scheduler"] + "/metrics", timeout=10).text
        finally:
            stack.stop()
    preempted = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("loraplex_scheduler_preemptions_total{")
    )
    ms = [s for s, _ in lat]
    expected = sum(b.get("n", 1) for b in bodies)
    return [
        str(len(lat)), f"{ms[0]:.1f}", f"{statistics.median(ms):.1f}", f"{max(ms):.1f}",
        str(sum(code != 200 for _, code in lat)), f"{took:.0f}",
        f"{sum(done)}/{expected}", f"{preempted:.0f}",
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-tokens", type=int, default=400, help="tokens of each hog sequence")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between canaries")
    p.add_argument("--write-docs", action="store_true")
    a = p.parse_args(argv)
    common = ["--device", "cpu", "--dtype", "float32", "--prefill-workers", "1"]
    long = {"prompt": "Hi", "max_tokens": a.max_tokens, "ignore_eos": True, "temperature": 0}
    cases = [
        ("32 sequences fill the batch", [], [{**long, "model": "base", "n": 16}] * 2,
         {"model": "base", "prompt": "Hi", "max_tokens": 4}),
        ("2 adapters pin both adapter slots", ["--max-loras", "2"],
         [{**long, "model": "a0"}, {**long, "model": "a1"}],
         {"model": "a2", "prompt": "Hi", "max_tokens": 4}),
    ]  # fmt: skip
    rows = []
    for name, extra, bodies, canary in cases:
        for preempt in ("0", "2"):
            flags = [*common, *extra, "--preempt-after", preempt]
            label = "off (0)" if preempt == "0" else "on (2 s)"
            rows.append([name, label, *run_case(flags, bodies, canary, a.interval)])
    head = ["case", "preemption", "canaries", "first canary s", "canary s p50", "max", "errors",
            "hog s", "hog sequences done", "preemptions"]  # fmt: skip
    on = [r for r in rows if r[1].startswith("on")]
    passed = all(r[6] == "0" and r[8].split("/")[0] == r[8].split("/")[1] for r in rows)
    body = "\n".join([
        f"Command: `{' '.join(['python bench/slot_hog.py', *argv])}`",
        f"({today()}; {machine_line()}).",
        "",
        "One prefill and one decode worker (demo model, CPU, 32 batch slots), two tenants. The "
        f"hog's sequences are {a.max_tokens} tokens (greedy, `ignore_eos`); the canary sends a "
        f"4-token completion every {a.interval:g} s until the hog's requests end. Off is "
        "`--preempt-after 0`, the behaviour before; on is the default.",
        "",
        markdown_table(head, rows),
        "",
        "- With preemption on, the hog's newest decoding sequences are paused for the canary "
        "and resume from their tokens (the stream pauses; the text is that of an uninterrupted "
        "run: `tests/stack/test_preemption_live.py`).",
        "- Every canary answered and every hog sequence completed in both modes: "
        + ("yes." if passed else "**NO**."),
        f"- Preemptions with it on: {', '.join(r[9] for r in on)}.",
        "- The first canary is sent once every hog stream has started, so it meets a full "
        "batch; later ones may find a slot the hog's staggered ends freed.",
    ])  # fmt: skip
    publish(SECTION, body, a.write_docs)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
