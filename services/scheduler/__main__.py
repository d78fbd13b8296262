"""``python -m loraplex.scheduler``: run the scheduler until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

from loraplex import env
from loraplex.gc_heap import freeze_startup_heap
from loraplex.native import is_compiled
from loraplex.scheduler.http_status import start_scheduler_status
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings, build_parser, settings_from_args
from loraplex.tenants_watch import LiveTenants


async def serve(settings: SchedulerSettings) -> int:
    tenants = LiveTenants(settings.tenants_file)  # re-read when the file changes
    service = SchedulerService(settings, tenants.current.weights())
    service.follow_tenants(tenants)
    # Before the bus: /health answers (and /ready says no) while NATS is still being reached.
    status = await start_scheduler_status(service, settings.metrics_host, settings.metrics_port)
    await service.start()
    freeze_startup_heap()  # modules and start-up state: out of every later full collection
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # compiled or interpreted: ~1.5x in decisions/s (loraplex/native.py, docs/benchmarks.md)
    code = "compiled" if is_compiled("loraplex.scheduler.placement") else "interpreted"
    print(
        f"loraplex scheduler ready (fairness={settings.fairness}, decision path {code})",
        flush=True,
    )
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(service.deposed.wait())]
    async with tenants.watching():
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    await service.stop()
    if status is not None:
        await status.stop()
    # A deposed leader's tables are stale: exit, and come back (supervisor, compose) as a standby.
    return 3 if service.deposed.is_set() else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env.configure_logging()
    return asyncio.run(serve(settings_from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
