"""Small Prometheus helpers the services share: series read at scrape time, bounded label values.

Totals a service already keeps (a worker's prefix-cache tokens, its preemptions) are exported as
counters read when Prometheus scrapes (``ScrapeCollector``), instead of being copied into a
``Counter`` on every change.  Label values that come from users (adapter names) are bounded by
``BoundedLabels``: the first ``limit`` distinct values keep their own series, the rest share one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

Family = CounterMetricFamily | GaugeMetricFamily


class ScrapeCollector(Collector):
    """Yields the families ``collect()`` builds, at every scrape (in the scraping thread/loop)."""

    def __init__(self, collect: Callable[[], Iterable[Family]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Family]:  # type: ignore[override]
        return list(self._collect())

    def describe(self) -> Iterable[Family]:  # type: ignore[override]
        return []  # families can be absent before the service starts: no fixed description


def register(registry: CollectorRegistry, collect: Callable[[], Iterable[Family]]) -> None:
    registry.register(ScrapeCollector(collect))


def gauge(name: str, doc: str, values: dict[tuple[str, ...], float], labels: list[str]) -> Family:
    fam = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        fam.add_metric(list(key), value)
    return fam


def counter(name: str, doc: str, values: dict[tuple[str, ...], float], labels: list[str]) -> Family:
    """A counter family; ``name`` without ``_total`` (the client library adds it)."""
    fam = CounterMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        fam.add_metric(list(key), value)
    return fam


class BoundedLabels:
    """Maps user-chosen values (adapter ids) to label values, at most ``limit`` distinct ones.

    Series are never deleted, so a tenant that registers adapters in a loop could otherwise grow
    the scrape without bound; past the limit new values share ``overflow``.
    """

    def __init__(self, limit: int, overflow: str = "other") -> None:
        if limit < 1:
            raise ValueError("the label limit must be positive")
        self.limit = limit
        self.overflow = overflow
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return self.overflow
        self._seen.add(value)
        return value
