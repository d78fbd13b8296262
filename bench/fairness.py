"""Fairness of the scheduling policies on the VTC paper's synthetic workloads (simulated server).

    python bench/fairness.py --mode sim [--workloads overload,proportional,...] [--seed 0]
                             [--time-scale 1] [--length-scale 1] [--rpm-limit 30] [--write-docs]

Every policy (VTC, VTC with length prediction, FCFS, LCF, RPM) is driven by the same seeded
arrivals through ``loraplex.tooling.simulator`` (a continuously batched server with
M = 10,000 batch tokens, ~900 tokens/s: the paper's A10G + Llama-2-7B setting, no model).  For each
run it reports the paper's quantitative service difference (max / avg over 19 windows of 60 s),
the largest absolute difference in accumulated service, throughput (input + output tokens/s),
service rate and mean first-token latency per tenant; plots accumulated service over time per
tenant into ``docs/img/fairness_<workload>.png`` (one panel per policy).

    python bench/fairness.py --mode live [--workloads overload,proportional,on_off_less]
                             [--policies vtc,fcfs,lcf,rpm] [--capacity REQ_PER_S] [--write-docs]

Live mode runs the same suites against the real stack: one ``loraplex up`` (``start_stack``, tiny
demo model, CPU) per policy, every workload client a tenant with its own API key in a tenants
file, requests streamed through the official ``openai`` client.  The server's capacity is measured
first (or given) and the paper's arrival rates are scaled to it; time is scaled by 0.1 (6 s
windows and ON/OFF periods) and each run cut to 30 s.  Service per tenant is taken from what the
clients received (tokens as they stream, the final usage chunk authoritative); the same metrics as
the simulation, plus the time-averaged accumulated difference, go into
``docs/img/fairness_live_<workload>.png`` and, with ``--write-docs``, into its own section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fairbench.live_mode import main_live  # noqa: E402
from fairbench.sim_mode import main_sim  # noqa: E402
from fairbench.workloads import IMG_DIR, LIVE_POLICIES, LIVE_WORKLOADS, WORKLOADS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--mode", choices=["sim", "live"], default="sim", help="sim: simulated server; live: stack"
    )
    p.add_argument("--workloads", default=None, help="comma-separated (default: per mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--time-scale", type=float, default=None, help="stretch durations (sim 1, live 0.1)"
    )
    p.add_argument(
        "--length-scale", type=float, default=None, help="scale token counts (sim 1, live 0.5)"
    )
    p.add_argument("--rpm-limit", type=int, default=30, help="sim: RPM baseline's requests/min")
    p.add_argument("--img-dir", type=Path, default=IMG_DIR)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    live = p.add_argument_group("live mode")
    live.add_argument("--policies", default=",".join(LIVE_POLICIES), help="comma-separated")
    live.add_argument("--duration-s", type=float, default=30.0, help="cut each run to this")
    live.add_argument("--capacity", type=float, default=None, help="req/s (default: measured)")
    live.add_argument("--calibration-s", type=float, default=6.0, help="capacity probe length")
    live.add_argument("--prefill-workers", type=int, default=0, help="0: colocated workers")
    live.add_argument("--decode-workers", type=int, default=1)
    live.add_argument("--max-num-seqs", type=int, default=8)
    live.add_argument("--num-kv-blocks", type=int, default=512)
    live.add_argument("--device", default="cpu")
    live.add_argument("--run-dir", type=Path, default=None, help="stack logs (default: a temp dir)")
    return p


def main(argv: list[str] | None = None) -> None:
    raw = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(raw)
    args.argv = raw
    live = args.mode == "live"
    default_workloads = LIVE_WORKLOADS if live else WORKLOADS
    args.workloads = [w.strip() for w in (args.workloads or ",".join(default_workloads)).split(",")]
    args.workloads = [w for w in args.workloads if w]
    args.time_scale = args.time_scale or (0.1 if live else 1.0)
    args.length_scale = args.length_scale or (0.5 if live else 1.0)
    args.policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    main_live(args) if live else main_sim(args)


if __name__ == "__main__":
    main()
