"""Hostile output constraints on a live stack: what one tenant's constraint costs another tenant.

    python bench/hostile_constraints.py [--canary-interval 0.25] [--write-docs]

A stack of one prefill and one decode worker (the demo model, CPU) and two tenants.  For each
constraint below, tenant ``beta`` sends one request with it while tenant ``alpha`` sends a 4-token
completion (the canary) every ``--canary-interval`` seconds; the first row is the canaries alone.
Reported: beta's status and time, and alpha's canary latencies and errors.  The constraints are
the red team's (2026-12-08), each of which stalled or failed every other tenant's requests before:

- a regex of repeats nested 3 deep, as ``guided_regex`` and as a JSON schema's ``pattern``
  (refused up front now);
- the same nesting through grammar rules, which no scan sees (the per-token budget ends it);
- a legal 70 KB schema of 2,400 optional properties and 40,000 choices (the compile limit ends
  them; before, the decode worker compiled them inside its K/V handler for 36-68 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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

SECTION = "Hostile output constraints on a live stack (bench/hostile_constraints.py)"
KEYS = {"alpha": "sk-bench-alpha", "beta": "sk-bench-beta"}
NESTED = "(((a{0,50}){0,50}){0,50})"
RULES = 'root ::= x{0,50}\nx ::= y{0,50}\ny ::= "a"{0,50}'


def attacks(model: str) -> list[tuple[str, str, dict[str, Any]]]:
    props = {f"p{i}": {"type": "string"} for i in range(2400)}
    msgs = [{"role": "user", "content": "Hi"}]
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": f"^{NESTED}$"}}}
    long = {"prompt": "Hi", "max_tokens": 60, "min_tokens": 60}
    return [
        ("regex, repeats nested 3 deep", "/v1/completions",
         {"model": model, **long, "guided_regex": NESTED}),
        ("schema pattern, repeats nested 3 deep", "/v1/chat/completions",
         {"model": model, "messages": msgs, "max_tokens": 40, "response_format":
          {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
        ("grammar rules nesting repeats 3 deep", "/v1/completions",
         {"model": model, **long, "guided_grammar": RULES}),
        ("the same again", "/v1/completions",
         {"model": model, **long, "guided_grammar": RULES}),
        ("schema of 2,400 optional properties (70 KB)", "/v1/chat/completions",
         {"model": model, "messages": msgs, "max_tokens": 8, "response_format":
          {"type": "json_schema", "json_schema": {"name": "x", "schema":
           {"type": "object", "properties": props}}}}),
        ("40,000 choices", "/v1/completions",
         {"model": model, "prompt": "Hi", "max_tokens": 8,
          "guided_choice": [f"c{i}" for i in range(40_000)]}),
    ]  # fmt: skip


def canaries(base: str, model: str, interval: float, stop: threading.Event) -> list[tuple]:
    got: list[tuple[float, int]] = []
    with httpx.Client(base_url=base, headers=_auth("alpha"), timeout=120) as c:
        while not stop.is_set():
            t = time.perf_counter()
            r = c.post("/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 4})
            got.append((time.perf_counter() - t, r.status_code))
            stop.wait(interval)
    return got


def _auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def probe(base: str, model: str, a: argparse.Namespace, path: str, body: dict | None) -> list:
    stop, lat = threading.Event(), []
    th = threading.Thread(target=lambda: lat.extend(canaries(base, model, a.interval, stop)))
    th.start()
    t = time.perf_counter()
    if body is None:
        time.sleep(a.baseline_s)
        status, message = "", ""
    else:
        with httpx.Client(base_url=base, headers=_auth("beta"), timeout=600) as c:
            r = c.post(path, json=body)
        status, message = str(r.status_code), r.json().get("error", {}).get("message", "")
    took = time.perf_counter() - t
    stop.set()
    th.join()
    ms = [1e3 * s for s, _ in lat]
    errors = sum(code != 200 for _, code in lat)
    return [status, f"{took:.2f}" if body else "", str(len(lat)),
            f"{statistics.median(ms):.0f}", f"{max(ms):.0f}", str(errors), message[:60]]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--interval", type=float, default=0.25, help="seconds between canaries")
    p.add_argument("--baseline-s", type=float, default=5.0, help="canaries alone, seconds")
    p.add_argument("--write-docs", action="store_true")
    a = p.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="loraplex-hostile-constraints-") as tmp:
        tenants = Path(tmp) / "tenants.json"
        tenants.write_text(json.dumps({"tenants": [
            {"name": "alpha", "api_key": KEYS["alpha"]}, {"name": "beta", "api_key": KEYS["beta"]},
        ]}))  # fmt: skip
        stack = Stack(Path(tmp) / "run")
        flags = ["--prefill-workers", "1", "--decode-workers", "1", "--tenants", str(tenants),
                 "--device", "cpu", "--dtype", "float32"]  # fmt: skip
        try:
            base, _, _ = start_stack(parse_up_args(flags), stack)
            model = httpx.get(base + "/v1/models", headers=_auth("alpha"), timeout=30).json()
            model = model["data"][0]["id"]
            rows = [["canaries alone", *probe(base, model, a, "", None)]]
            for name, path, body in attacks(model):
                rows.append([name, *probe(base, model, a, path, body)])
        finally:
            stack.stop()
    passed = all(r[1].startswith("4") for r in rows[1:]) and all(r[6] == "0" for r in rows)
    head = ["beta's request", "beta status", "beta s", "canaries", "canary ms p50", "max",
            "canary errors", "beta's error"]  # fmt: skip
    body = "\n".join([
        f"Command: `{' '.join(['python bench/hostile_constraints.py', *argv])}`",
        f"({today()}; {machine_line()}).",
        "",
        "One prefill and one decode worker (demo model, CPU), two tenants. Tenant beta sends one "
        "request with the constraint named; meanwhile tenant alpha sends a 4-token completion "
        f"every {a.interval:g} s. Before these limits (the red team's run at 66c5522, same "
        "machine): the nested regex and pattern hung the decode worker until it was killed, "
        "and every canary after the first three got a 503 after 30 s; the 2,400-property schema "
        "ran 68 s and made a canary fail with a 503; 40,000 choices stalled a canary 18 s.",
        "",
        markdown_table(head, rows),
        "",
        "- The first grammar-rules request is the stack's first constrained one to reach the "
        "workers: each worker builds xgrammar's compiler first (importing transformers, loading "
        "the tokenizer: seconds of CPU on this box, which the canaries feel too). The same "
        "request again shows the per-token budget alone.",
        "- Every hostile request a 4xx, no canary failed: " + ("yes." if passed else "**NO**."),
    ])  # fmt: skip
    publish(SECTION, body, a.write_docs)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
