"""vLLM-named copies of the gateway's request series, for dashboards and alerts written for vLLM
(its Grafana dashboard reads these names).

Read from ``metrics.py``'s own histograms and counters at scrape time (nothing is observed twice),
summed over loraplex's tenant and adapter labels: a vLLM dashboard has none.  Names, types and
labels are vLLM's (``model_name``, ``engine``); the histograms keep loraplex's bucket bounds, so
``histogram_quantile`` works but a rule on one of vLLM's own ``le`` values may find no such bucket.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

Family = CounterMetricFamily | HistogramMetricFamily
ENGINE = "0"  # vLLM's data-parallel engine index
# vLLM's finish reasons (all exported, at 0 when unused, as vLLM does)
VLLM_FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
# loraplex's generation outcomes -> vLLM's; other finish reasons from the worker count as "stop"
_REASONS = {
    "length": "length",
    "error": "error",
    "abort": "abort",
    "timeout": "abort",
    "cancelled": "abort",
}


class Observed(Protocol):
    """What is read of ``metrics.GatewayMetrics`` (a Protocol: no import cycle)."""

    ttft: Histogram
    itl: Histogram
    e2e: Histogram
    prompt_len: Histogram
    generation_len: Histogram
    tokens: Counter  # labels tenant, kind (prompt, completion)
    finished: Counter  # label reason


def _samples(source: Counter | Histogram, suffix: str) -> Iterable[tuple[dict[str, str], float]]:
    for metric in source.collect():
        for s in metric.samples:
            if s.name.endswith(suffix):
                yield s.labels, s.value


def _histogram(
    name: str, doc: str, source: Histogram, labels: list[str], values: list[str]
) -> HistogramMetricFamily:
    """``source`` (unlabelled) under another name and labels: same buckets, count and sum."""
    buckets = [(lb["le"], v) for lb, v in _samples(source, "_bucket")]
    total = sum(v for _, v in _samples(source, "_sum"))
    fam = HistogramMetricFamily(name, doc, labels=labels)
    fam.add_metric(values, buckets, total)
    return fam


def _counter(
    name: str, doc: str, value: float, labels: list[str], values: list[str]
) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=labels)  # adds _total, as vLLM's Counter does
    fam.add_metric(values, value)
    return fam


class VllmRequestSeries:
    def __init__(self, metrics: Observed, model_name: str) -> None:
        self._m, self._model = metrics, model_name

    def collect(self) -> list[Family]:
        m, labels, values = self._m, ["model_name", "engine"], [self._model, ENGINE]
        # vLLM observes one inter-token interval per engine step; the gateway one per streamed
        # chunk (its mean per token), which is what vLLM's older name also meant.
        histograms = [
            ("time_to_first_token_seconds", "Histogram of time to first token in seconds.", m.ttft),
            ("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", m.itl),
            (
                "time_per_output_token_seconds",
                "Histogram of time per output token in seconds.",
                m.itl,
            ),
            (
                "e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                m.e2e,
            ),
            ("request_prompt_tokens", "Number of prefill tokens processed.", m.prompt_len),
            (
                "request_generation_tokens",
                "Number of generation tokens processed.",
                m.generation_len,
            ),
        ]
        out: list[Family] = [
            _histogram(f"vllm:{name}", doc, source, labels, values)
            for name, doc, source in histograms
        ]
        tokens = {"prompt": 0.0, "completion": 0.0}
        for lb, v in _samples(m.tokens, "_total"):
            tokens[lb["kind"]] = tokens.get(lb["kind"], 0.0) + v
        out.append(
            _counter(
                "vllm:prompt_tokens",
                "Number of prefill tokens processed.",
                tokens["prompt"],
                labels,
                values,
            )
        )
        out.append(
            _counter(
                "vllm:generation_tokens",
                "Number of generation tokens processed.",
                tokens["completion"],
                labels,
                values,
            )
        )
        finished = dict.fromkeys(VLLM_FINISH_REASONS, 0.0)
        for lb, v in _samples(m.finished, "_total"):
            finished[_REASONS.get(lb["reason"], "stop")] += v
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*labels, "finished_reason"],
        )
        for reason, count in finished.items():
            success.add_metric([*values, reason], count)
        out.append(success)
        return out

    def describe(self) -> list[Family]:
        return []  # collected from the other series: no fixed description needed
