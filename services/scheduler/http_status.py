"""The scheduler's HTTP listener (``--metrics-host``, ``--metrics-port``): ``/health``,
``/ready`` and ``/metrics`` (``loraplex.status_server``).

``/ready``: connected to NATS and serving SUBMIT.  The body also says whether this replica leads
(``leader``; a standby is ready as well), whether the workers it sees
can serve a request (``can_serve``) and how many there are per pool; that is the gateways' part of
readiness (they read it from the stats broadcast), not the scheduler's: a scheduler with no
workers yet is still the one that must be running when they join.  The series name tenants, so
the listener is on loopback by default.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette

from loraplex.scheduler.metrics import pool_counts
from loraplex.status_server import StatusListener, StatusListenError, status_app

if TYPE_CHECKING:
    from loraplex.scheduler.service import SchedulerService

log = logging.getLogger(__name__)


def readiness(service: SchedulerService) -> tuple[bool, dict[str, Any]]:
    bus = service.bus
    connected = bus is not None and bus.is_connected
    detail = {
        "nats": connected,
        "leader": service.leading,  # the standby replica is ready too: it must be running
        "can_serve": service.registry.can_serve(),
        "pools": pool_counts(service.registry),
    }
    return connected and service.started, detail


def scheduler_status_app(service: SchedulerService) -> Starlette:
    return status_app(service.metrics.registry, lambda: readiness(service))


async def start_scheduler_status(
    service: SchedulerService, host: str, port: int
) -> StatusListener | None:
    """Start the listener (None when ``port`` is 0); a taken port exits naming the flag."""
    if not port:
        return None
    listener = StatusListener(scheduler_status_app(service), host, port)
    try:
        url = await listener.start()
    except StatusListenError as e:
        raise SystemExit(f"loraplex scheduler: error: {e} (--metrics-host/--metrics-port)") from e
    log.info("scheduler /health, /ready, /metrics on %s", url)
    return listener
