"""Generated tokens/s of mixed-adapter batches: loraplex vs HF transformers + PEFT vs a per-adapter loop.

    python bench/engine.py [--adapters 1,8,32] [--requests 64] [--prompt-len 128] [--output-len 64]
                           [--hidden 512] [--layers 6] [--repeats 1] [--quiet PCT] [--write-docs]

Every system gets the same ``--requests`` random prompts (exactly ``--prompt-len`` token ids, fixed
seed) and decodes ``--output-len`` tokens greedily for each, ignoring EOS.  Request ``i`` uses adapter
``i % n``; all adapters are rank 16 over q, k, v, o, gate, up and down.

* loraplex: one ``LLM.generate`` call for the whole mixed batch.
* HF+PEFT: one ``PeftModel`` with every adapter loaded, one ``generate`` call for the whole batch
  with ``adapter_names`` per row (PEFT's mixed-adapter batch inference).
* per-adapter loop: the same loraplex engine, one ``generate`` call per adapter, one after another.

tokens/s = requests * output_len / wall time of the call(s), prefill included.  A warm-up pass of
each system over every adapter runs first (so every adapter is resident in a loraplex slot, as it is
in the PeftModel).  With ``--repeats N`` the three systems run N times, interleaved, and the fastest
run of each counts (the box may be shared: each kept run also records the system-wide CPU pressure,
i.e. the share of its wall time in which some task waited for a CPU); ``--quiet PCT`` makes each
timed run first wait (up to 2 min) for that pressure to fall below PCT %.  The run also checks
that loraplex's greedy tokens equal HF's.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    load_average,
    machine_line,
    num_cores,
    replace_doc_section,
    unshadow_packages,
)
from enginebench.measure import measure, warm_up  # noqa: E402
from enginebench.options import parse_args  # noqa: E402
from enginebench.report import SECTION, describe_model, docs_body  # noqa: E402
from enginebench.systems import build_hf, build_loraplex  # noqa: E402
from enginebench.tables import agreement_table, results_table, runs_table, target_lines  # noqa: E402
from enginebench.workload import Workload, random_prompts, write_checkpoint  # noqa: E402

unshadow_packages()  # the HF + PEFT peer imports transformers


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, __doc__)
    torch.set_num_threads(num_cores())
    started, load = time.perf_counter(), load_average()
    with tempfile.TemporaryDirectory(prefix="loraplex-bench-") as tmp:
        spec, paths = write_checkpoint(Path(tmp), args)
        work = Workload(
            random_prompts(args.requests, args.prompt_len, spec.vocab_size), list(paths)
        )
        llm = build_loraplex(Path(tmp) / "model", paths, args)
        hf = build_hf(Path(tmp) / "model", paths)
        model = describe_model(spec, sum(p.numel() for p in llm.engine.model.parameters()))
        print(f"model: {model}\nmachine: {machine_line()}\nwarming up...", flush=True)
        warm_up(llm, hf, work, args)
        rows = [measure(llm, hf, work, n, args) for n in args.adapters]
    total = time.perf_counter() - started
    generated = args.requests * args.output_len
    print()
    print(results_table(rows, generated))
    print()
    print(runs_table(rows))
    print()
    print(agreement_table(rows))
    print()
    print("\n".join(target_lines(rows, generated)))
    print(f"\ntotal {total:.0f}s")
    if args.write_docs:
        replace_doc_section(SECTION, docs_body(rows, args, argv, model, total, load))
        print("updated docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
