"""Adapter paging: cold-load latency of Llama-2-7B-sized adapters, and hit rates / tokens/s of a
worker serving 1000 adapters under Zipf popularity.

    python bench/adapters.py [--ranks 8,16,64] [--repeats 5]
                             [--catalog 1000] [--requests 600] [--warmup 200] [--alphas 1.0,1.5]
                             [--slots 16] [--host-cache-mb 64] [--concurrency 32]
                             [--prompt-len 16] [--output-len 8] [--skip-cold] [--skip-zipf]
                             [--write-docs]

Part 1, cold load (``--ranks``): one PEFT adapter per rank with every target (q, k, v, o, gate,
up, down) at Llama-2-7B shapes (hidden 4096, intermediate 11008, 32 layers), random fp16 tensors
in ``adapter_model.safetensors``.  It is registered in a redis-server started by the bench (no
persistence), and each repeat times the path a worker takes on a miss:

* fetch + sha256: ``AdapterStore.fetch`` (chunked HMGETs, then the sha256 check; sha256 alone is
  also timed on the same bytes);
* parse: ``parse_adapter`` against a ``ModelConfig`` built from the Llama-2-7B config dict (A/B
  shapes and ranks validated, B pre-scaled, converted to fp32, NaN/inf check);
* copy: ``LoraWeights.load`` into slot 0 of an fp16 ``LoraWeights(max_loras=1,
  max_rank=rank)``, i.e. exactly one slot's worth of stacked storage.

The same adapter is also loaded from local files (read both files + the same parse and copy),
from the page cache and after ``posix_fadvise(DONTNEED)`` (best effort: cold if the kernel and
file system honour it).  Each cell is the median of ``--repeats`` runs.

Part 2, Zipf (``--catalog`` adapters, rank 8, every target, on the demo model's shapes, fp16
files): an in-process ``Worker`` (role both, CPU, ``--slots`` device slots) is fed over NATS
exactly as the scheduler would (``PrefillAssign`` on its subject, ``TokenDelta`` back on a
stream subject), closed loop with ``--concurrency`` requests in flight; each request draws its
adapter from a Zipf(alpha) popularity over the catalogue, a random ``--prompt-len``-token prompt,
and decodes ``--output-len`` tokens greedily.  ``--warmup`` requests from the same distribution
run first (not measured).  Two systems:

* loraplex: Redis fetch -> host LRU (``--host-cache-mb``) -> device slots (the worker as shipped);
* disk on every miss: the same engine and pager, but the fetch reads the PEFT files from a local
  directory and there is no host tier (a 1-byte budget: an adapter leaves host memory, and with it
  its device slot, as soon as no request uses it).

host hit = requests that needed no fetch (adapter resident, or already being fetched for another
request); slot hit = requests admitted without copying weights into a device slot; tokens/s =
generated tokens / wall time of the measured requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapterbench.cold_load import ColdRow, cold_load  # noqa: E402
from adapterbench.options import Args, parse_args  # noqa: E402
from adapterbench.report import SECTION, docs_body  # noqa: E402
from adapterbench.tables import cold_tables, zipf_table  # noqa: E402
from adapterbench.zipf_run import ZipfRow, zipf  # noqa: E402
from common import replace_doc_section  # noqa: E402

from loraplex.tooling.servers import start_nats, start_redis  # noqa: E402


async def amain(args: Args, argv: Sequence[str]) -> int:
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="loraplex-bench-adapters-") as tmp:
        root = Path(tmp)
        redis = start_redis(root / "redis", appendonly=False)
        nats = start_nats(root / "nats")
        try:
            cold: list[ColdRow] = []
            zrows: list[ZipfRow] = []
            if not args.skip_cold:
                print(f"cold load (ranks {args.ranks}, {args.repeats} repeats)", flush=True)
                cold = await cold_load(args, redis.url, root)
            if not args.skip_zipf:
                print(f"zipf ({args.catalog} adapters, alphas {args.alphas})", flush=True)
                zrows = await zipf(args, nats.url, redis.url, root)
        finally:
            nats.stop()
            redis.stop()
    seconds = time.perf_counter() - started
    load = (load_before, os.getloadavg()[0])
    if cold:
        print("\n" + "\n\n".join(cold_tables(cold)))
    if zrows:
        print("\n" + zipf_table(zrows))
    print(f"\ntotal {seconds:.0f}s")
    if args.write_docs:
        replace_doc_section(SECTION, docs_body(args, argv, cold, zrows, seconds, load))
        print("updated docs/benchmarks.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(amain(parse_args(argv, __doc__), argv))


if __name__ == "__main__":
    raise SystemExit(main())
