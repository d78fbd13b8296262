"""A batch's output and error files, put together from its stored answers when it ends.

The answers go in input order: 200s in the output file, the others (and, for a batch cancelled
or expired first, the lines with no answer) in the error file.  The stored answers are already
encoded as the files hold them, so they are copied, never decoded again, and read a slice at a
time: only the two files (their bytes counted in the tenant's budget as the answers were
stored) and one slice are in memory at once.  Plain Python.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from loraplex.gateway.batches.lines import iter_lines
from loraplex.gateway.batches.objects import unanswered_line
from loraplex.gateway.batches.store import BatchStore

SLICE = 256  # stored answers read at once


@dataclass
class Outputs:
    output: bytearray
    errors: bytearray
    completed: int  # lines in the output file
    failed: int  # stored answers that were not a 200 (the unanswered ones are not counted)


async def assemble(
    store: BatchStore, tenant: str, batch_id: str, content: bytes, endpoint: str, status: str
) -> Outputs:
    ids = await asyncio.to_thread(_custom_ids, content, endpoint)  # 64 MiB of JSON: off-loop
    out = Outputs(bytearray(), bytearray(), 0, 0)
    for start in range(0, len(ids), SLICE):
        part = ids[start : start + SLICE]
        got = await store.result_lines(tenant, batch_id, [i for i, _ in part])
        for index, custom_id in part:
            if index in got:
                ok, raw = got[index]
                out.failed += not ok
            else:
                ok, raw = False, _unanswered(custom_id, status)
            rows = out.output if ok else out.errors
            rows.extend(raw)
            rows.extend(b"\n")
            out.completed += ok
    return out


def _custom_ids(content: bytes, endpoint: str) -> list[tuple[int, str]]:
    return [(line.index, line.custom_id) for line in iter_lines(content, endpoint)]


def _unanswered(custom_id: str, status: str) -> bytes:
    line = unanswered_line(custom_id, f"batch_{status}", f"the batch was {status} before this ran")
    return json.dumps(line, ensure_ascii=False).encode()
