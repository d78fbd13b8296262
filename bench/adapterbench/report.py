"""The docs section: command, machine, workload, tables and what is not measured."""

from __future__ import annotations

from collections.abc import Sequence

from common import machine_line, num_cores, today

from .cold_load import ColdRow
from .config import SECTION
from .options import Args
from .tables import cold_tables, zipf_table
from .zipf_run import ZipfRow

__all__ = ["SECTION", "docs_body"]


def docs_body(
    args: Args,
    argv: Sequence[str],
    cold: list[ColdRow],
    zrows: list[ZipfRow],
    seconds: float,
    load: tuple[float, float],
) -> str:
    cmd = " ".join(["python", "bench/adapters.py", *argv])
    parts = [
        f"Command: `{cmd}` ({today()}; {seconds:.0f} s in all).",
        "",
        f'Machine: {machine_line()}.  No GPU: the engine runs on the CPU, so the "device" slot copy '
        "is a host-to-host copy here (on a GPU it is a pinned-host-to-HBM transfer), and Redis runs on "
        "the same machine (loopback, no network).  Other jobs shared the machine (1-minute load "
        f"average {load[0]:.1f} at the start, {load[1]:.1f} at the end, on {num_cores()} cores), so "
        "absolute numbers are noisy: compare within a table, not across runs.",
    ]
    if cold:
        parts += [
            "",
            "### Cold load of Llama-2-7B-sized adapters",
            "",
            f"One PEFT adapter per rank targeting q, k, v, o, gate, up and down in all 32 layers "
            f"(hidden 4096, intermediate 11008), random fp16 tensors; median of {args.repeats} runs.  "
            "Redis -> device slot, the path a worker takes on a miss.  *Redis fetch + sha256*: "
            "`AdapterStore.fetch` (sequential HMGETs of 16 x 512 KiB chunks each, then its sha256 "
            "check); *of which sha256*: hashing the same bytes once more, on its own; *parse*: "
            "`parse_adapter` against the Llama-2-7B `ModelConfig` (shape/rank validation, B "
            "pre-scaled, fp32 conversion, NaN/inf check; in a thread, as the pager runs it); *copy to "
            "slot*: `LoraWeights.load` into one fp16 slot (`max_loras=1`, `max_rank` = the adapter's "
            "rank); *best*: the fastest of the runs.",
            "",
            cold_tables(cold)[0],
            "",
            "The same adapter from local files instead of Redis (read both PEFT files, then the same "
            "parse and copy), from the page cache, and after `posix_fadvise(DONTNEED)` on the weights "
            "file (best effort: how cold that is depends on the kernel and the virtual disk).",
            "",
            cold_tables(cold)[1],
            "",
            "Parsed adapters are held in fp32 on the host: "
            + ", ".join(f"rank {r.rank} {r.host_mb:.0f} MiB" for r in cold)
            + "; one device slot of that rank in fp16: "
            + ", ".join(f"{r.slot_mb:.0f} MiB" for r in cold)
            + ".",
        ]
    if zrows:
        parts += [
            "",
            "### Zipf popularity over a large catalogue",
            "",
            f"{args.catalog} adapters registered (rank {args.adapter_rank}, all seven targets, on the "
            f"demo model: hidden 128, intermediate 256, 4 layers; fp16 files).  One in-process worker "
            f"(role both, CPU, fp32, {args.slots} device slots, max {args.concurrency} sequences) is "
            f"driven over NATS like the scheduler drives it, {args.concurrency} requests in flight "
            f"(closed loop); each request picks its adapter from Zipf(alpha) over the catalogue, a "
            f"random {args.prompt_len}-token prompt and {args.output_len} greedy output tokens.  "
            f"{args.warmup} warm-up requests, then {args.requests} measured.  *loraplex*: Redis -> "
            f"host LRU ({args.host_cache_mb} MiB, about {args.host_cache_mb * 4} parsed adapters) -> "
            "device slots.  *disk on every miss*: the same worker, but the fetch reads the PEFT files "
            "from a local directory (page cache warm) and there is no host tier (1-byte budget: an "
            "adapter leaves host memory and its slot as soon as no request uses it).",
            "",
            zipf_table(zrows),
            "",
            "*host hit*: requests that needed no fetch (adapter resident, or already being fetched for "
            "another request); *slot hit*: requests admitted without copying weights into a device slot; "
            "*tokens/s*: generated tokens / wall time of the measured requests; latency from publishing "
            "the request to its last token.  *retried / failed*: requests that got a `RequestError` and "
            "were sent again (up to 3 times) / that never succeeded.  A miss delays only its own "
            "request: the worker admits the requests behind it whose adapters are resident while "
            "the fetch runs (`test_requests_are_admitted_while_another_adapter_pages_in`).",
        ]
    parts += [
        "",
        "Not measured here: GPU transfers and kernels, Redis over a real network, several workers "
        "sharing one Redis, and adapters larger than the host budget.  The tiny model makes decoding "
        "cheap, so the paging overhead weighs more in tokens/s than it would next to a 7B model's "
        "steps; the cold-load table is the one to scale from.",
    ]
    return "\n".join(parts)
