"""``loraplex run-batch``: vLLM's ``run-batch`` against a running loraplex gateway.

``vllm run-batch -i requests.jsonl -o results.jsonl --model M`` reads OpenAI batch lines and
writes one result line per request.  Here the same files go through the gateway's Batch API
(``/v1/files``, ``/v1/batches``), so the requests are queued under the caller's tenant and its
fair share, run on the stack's workers, and survive a gateway restart when Redis backs it::

    loraplex run-batch -i requests.jsonl -o results.jsonl [--url http://127.0.0.1:8000]

The API key comes from ``OPENAI_API_KEY`` (never a flag: shell history).  The output holds every
request's line in input order, answered (200) or not (its error), as vLLM's does.  A file the
gateway refuses prints its problems with their line numbers and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from loraplex.errors import LoraplexError

ENDED = ("completed", "failed", "cancelled", "expired")


class RunBatchError(LoraplexError):
    """The gateway refused the file or the batch, or could not be reached."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run-batch", help="run an OpenAI batch file through a running gateway")
    p.add_argument("-i", "--input-file", required=True, help="the requests, one JSON per line")
    p.add_argument("-o", "--output-file", required=True, help="where the results are written")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's base URL")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks")
    p.set_defaults(func=run_batch)


def run_batch(args: argparse.Namespace) -> int:
    lines = Path(args.input_file).read_bytes()
    endpoint = _endpoint(lines)
    key = os.environ.get("OPENAI_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=120) as http:
        f = _ok(http.post("/v1/files", files={"file": ("input.jsonl", lines)},
                          data={"purpose": "batch"}))  # fmt: skip
        body = {"input_file_id": f["id"], "endpoint": endpoint, "completion_window": "24h"}
        batch = _ok(http.post("/v1/batches", json=body))
        while batch["status"] not in ENDED:
            counts = batch["request_counts"]
            print(f"{batch['id']}: {counts['completed'] + counts['failed']} of {counts['total']}",
                  file=sys.stderr)  # fmt: skip
            time.sleep(args.poll)
            batch = _ok(http.get(f"/v1/batches/{batch['id']}"))
        if batch["status"] == "failed":
            for e in (batch.get("errors") or {}).get("data", []):
                print(f"line {e.get('line')}: {e.get('message')}", file=sys.stderr)
            return 1
        rows = _rows(http, batch["output_file_id"]) + _rows(http, batch["error_file_id"])
    order = {json.loads(x)["custom_id"]: i for i, x in enumerate(lines.splitlines()) if x.strip()}
    rows.sort(key=lambda r: order.get(r["custom_id"], len(order)))
    Path(args.output_file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{batch['id']} {batch['status']}: {batch['request_counts']}", file=sys.stderr)
    return 0 if batch["status"] == "completed" else 1


def _endpoint(lines: bytes) -> str:
    """The batch's endpoint: the ``url`` of the first request (the gateway checks the rest)."""
    for raw in lines.splitlines():
        if raw.strip():
            try:
                url = json.loads(raw).get("url")
            except (ValueError, AttributeError):
                raise RunBatchError(
                    "the first line of the input file is not a JSON object"
                ) from None
            if not isinstance(url, str):
                raise RunBatchError("the first request has no url")
            return url
    raise RunBatchError("the input file holds no requests")


def _ok(r: httpx.Response) -> dict[str, Any]:
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        raise RunBatchError(f"{r.request.method} {r.request.url.path}: {r.status_code} {message}")
    return r.json()


def _rows(http: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    r = http.get(f"/v1/files/{file_id}/content")
    if r.status_code != 200:
        _ok(r)
    return [json.loads(x) for x in r.text.splitlines() if x.strip()]
