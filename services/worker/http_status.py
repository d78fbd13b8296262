"""A worker's HTTP listener (``--metrics-host``, ``--metrics-port``): ``/health``, ``/ready``
and ``/metrics`` (``loraplex.status_server``, ``metrics.py``).

It starts before the model loads, so ``/health`` answers during a long load and warm-up (a
Kubernetes liveness probe does not kill a worker that is compiling kernels) while ``/ready`` says
503 ``loading``.  ``/ready`` is 200 once the worker is subscribed and heart-beating, and 503 again
while it drains (SIGTERM) or has lost NATS: the scheduler places nothing on it then either.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from loraplex.status_server import StatusListener, StatusListenError, status_app
from loraplex.worker.metrics import WorkerMetrics

if TYPE_CHECKING:
    from loraplex.worker.runtime import Worker

log = logging.getLogger(__name__)


class WorkerStatus:
    """What ``/ready`` reads: the worker, once it exists (``attach``)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.worker: Worker | None = None

    def attach(self, worker: Worker) -> None:
        self.worker = worker
        self.metrics.bind(worker.engine)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        w = self.worker
        if w is None or w.bus is None:
            return False, {"state": "loading"}
        connected = w.bus.is_connected
        detail = {"state": "draining" if w.draining else "serving", "nats": connected}
        return connected and not w.draining, detail


async def start_worker_status(status: WorkerStatus, host: str, port: int) -> StatusListener | None:
    """Start the listener (None when ``port`` is 0); a taken port exits naming the flag."""
    if not port:
        return None
    listener = StatusListener(status_app(status.metrics.registry, status.ready), host, port)
    try:
        url = await listener.start()
    except StatusListenError as e:
        raise SystemExit(f"loraplex worker: error: {e} (--metrics-host/--metrics-port)") from e
    log.info("worker /health, /ready, /metrics on %s", url)
    return listener
