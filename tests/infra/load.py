"""Steady load on a live stack while a server dies: requests sent one after another on a few
threads (the official ``openai`` client, half of them streamed), each one's outcome recorded."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import openai


@dataclass(frozen=True)
class Outcome:
    start: float
    end: float
    error: str  # empty: the request completed with every token it asked for


class Load:
    """``lanes`` threads, each sending its next request when the last one ended, until ``stop``."""

    def __init__(self, base: str, model: str, lanes: int = 4, max_tokens: int = 8) -> None:
        self.client = openai.OpenAI(
            base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60
        )
        self.model, self.max_tokens = model, max_tokens
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._lane, args=(i % 2 == 1,), daemon=True)
            for i in range(lanes)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)

    def _one(self, stream: bool) -> str:
        args = {"model": self.model, "prompt": "hello there", "max_tokens": self.max_tokens,
                "temperature": 0, "extra_body": {"ignore_eos": True}}  # fmt: skip
        if not stream:
            usage = self.client.completions.create(**args).usage
            return "" if usage.completion_tokens == self.max_tokens else f"short: {usage}"
        chunks = list(self.client.completions.create(stream=True, **args))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        return (
            "" if chunks and chunks[-1].choices[0].finish_reason == "length" else f"cut: {text!r}"
        )

    def _lane(self, stream: bool) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                error = self._one(stream)
            except openai.APIError as e:
                error = f"{type(e).__name__}: {e}"
            self.outcomes.append(Outcome(start, time.monotonic(), error))

    def wait_completed(self, n: int, after: float, timeout: float = 60.0) -> None:
        """Until ``n`` requests sent after ``after`` have completed (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while sum(1 for o in self.outcomes if o.start > after and not o.error) < n:
            assert time.monotonic() < deadline, f"requests did not flow again: {self.failed()}"
            time.sleep(0.1)

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]

    def longest_gap(self, since: float) -> float:
        """The longest time after ``since`` in which no request completed."""
        ends = sorted(o.end for o in self.outcomes if not o.error and o.end > since)
        points = [since, *ends]
        return max((b - a for a, b in zip(points, points[1:], strict=False)), default=0.0)
