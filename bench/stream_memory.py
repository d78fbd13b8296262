"""What the gateway holds for streams whose client never reads: deltas queued as they came (the
router before) vs joined while unread (``gateway/request_stream.py``), in the same run.

    python bench/stream_memory.py [--choices 16] [--tokens 1000] [--write-docs]

A request of ``--choices`` choices (``n``) streams ``--tokens`` one-token deltas each, as a
worker sends them (decoded from the wire, so fresh objects), into buffers nobody reads.  Measured
with tracemalloc: the bytes the buffers hold once every delta arrived, without logprobs and with
5 and 20 alternatives per token.  Then the joined buffer is read out and checked: the same token
ids, text and logprobs as the deltas sent, in fewer pieces.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, publish, today  # noqa: E402

from loraplex.gateway.request_stream import RequestStream  # noqa: E402
from loraplex.protocol import TokenDelta, decode, encode  # noqa: E402
from loraplex.token_logprobs import TokenLogprobs  # noqa: E402

SECTION = "Unread streams: deltas queued vs joined (bench/stream_memory.py)"


def wire(rid: str, i: int, k: int | None) -> TokenDelta:
    t = 100 + (i * 7) % 900
    lps = None
    if k is not None:
        lps = [TokenLogprobs(t, -0.5, tuple((t + j, -1.0 - j) for j in range(k)), 1)]
    d = TokenDelta(rid, [t], " tok", None, 10, i + 1, logprobs=lps, text_start=4 * i)
    return decode(encode(d), TokenDelta)  # as the subscription decodes it


def held(joined: bool, choices: int, tokens: int, k: int | None) -> tuple[int, list]:
    """Bytes the buffers hold (tracemalloc) and the buffers."""

    async def run() -> tuple[int, list]:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        queues: list[asyncio.Queue] = [
            RequestStream(f"r{c}") if joined else asyncio.Queue() for c in range(choices)
        ]
        for i in range(tokens):
            for c, q in enumerate(queues):
                q.put_nowait(wire(f"r{c}", i, k))
        gc.collect()
        size = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return size, queues

    return asyncio.run(run())


def read_out(q: asyncio.Queue) -> tuple[list[int], str, int, int]:
    ids, text, pieces, lps = [], "", 0, 0
    while not q.empty():
        d = q.get_nowait()
        ids += d.token_ids
        text += d.text
        lps += len(d.logprobs or [])
        pieces += 1
    return ids, text, pieces, lps


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--choices", type=int, default=16)
    p.add_argument("--tokens", type=int, default=1000)
    p.add_argument("--write-docs", action="store_true")
    a = p.parse_args(argv)
    rows, same = [], True
    for k in (None, 5, 20):
        before, plain = held(False, a.choices, a.tokens, k)
        after, joined = held(True, a.choices, a.tokens, k)
        got, want = read_out(joined[0]), read_out(plain[0])
        same = same and got[:2] == want[:2] and got[3] == want[3]
        n = a.choices * a.tokens
        rows.append([
            "none" if k is None else f"top {k}", f"{before / 1e6:.2f}", f"{after / 1e6:.2f}",
            f"{before / max(after, 1):.1f}x", f"{before / n:.0f}", f"{after / n:.0f}",
            f"{want[2]} -> {got[2]}",
        ])  # fmt: skip
    head = ["logprobs", "queued MB", "joined MB", "less", "queued B/token", "joined B/token",
            "pieces a reader gets (one choice)"]  # fmt: skip
    body = "\n".join([
        f"Command: `{' '.join(['python bench/stream_memory.py', *argv])}`",
        f"({today()}; {machine_line()}).",
        "",
        f"One request of {a.choices} choices x {a.tokens} one-token deltas that its client never "
        "reads; tracemalloc of the buffers once every delta arrived. *Queued*: each delta kept as "
        "it came (the router before); *joined*: the unread deltas of a request joined into one "
        "(`gateway/request_stream.py`). What one tenant's requests hold unread is also capped "
        "(`LORAPLEX_GATEWAY_STREAM_BUFFER_MB`, 64 MiB: then its request with the most unread "
        "fails with a 429).",
        "",
        markdown_table(head, rows),
        "",
        "- The joined buffer reads out the same token ids, text and logprobs: "
        + ("yes." if same else "**NO**."),
    ])  # fmt: skip
    publish(SECTION, body, a.write_docs)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
