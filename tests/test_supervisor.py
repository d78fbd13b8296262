"""The supervisor restarts real child processes that exit, with doubling backoff that resets after
a stable run, and never after ``stop``."""

from __future__ import annotations

import sys
import time

from loraplex.tooling.supervisor import RestartPolicy, Service, Supervisor

POLICY = RestartPolicy(initial_backoff_s=1.0, max_backoff_s=4.0, stable_after_s=10.0)


def _service(tmp_path, code: str) -> Service:
    return Service("svc", [sys.executable, "-c", code], tmp_path / "svc.log")


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_stable_run():
    assert [POLICY.delay(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_an_exited_service_is_restarted_after_its_backoff(tmp_path):
    svc = _service(tmp_path, "import sys; print('up', flush=True); sys.exit(3)")
    lines: list[str] = []
    sup = Supervisor([svc], POLICY, say=lines.append)
    first = svc.start()
    first.wait(10)
    t0 = svc.started_at
    sup.poll(now=t0 + 0.1)  # noticed: a restart is scheduled, nothing started yet
    assert svc.restart_at == t0 + 0.1 + 1.0 and svc.proc is first
    assert "svc exited with code 3" in lines[-1] and "restarting in 1.0s" in lines[-1]
    sup.poll(now=t0 + 0.5)
    assert svc.proc is first  # still backing off
    sup.poll(now=t0 + 1.2)
    assert svc.proc is not first and svc.restarts == 1 and len(svc.history) == 2
    assert "restarted svc" in lines[-1]
    svc.proc.wait(10)  # type: ignore[union-attr]
    # A second quick exit doubles the delay; an exit after a stable run resets it.
    sup.poll(now=svc.started_at + 0.1)
    assert svc.quick_failures == 2 and svc.restart_at == svc.started_at + 0.1 + 2.0
    svc.restart_at = None
    sup.poll(now=svc.started_at + 60.0)
    assert svc.quick_failures == 1 and svc.restart_at == svc.started_at + 61.0
    assert (tmp_path / "svc.log").read_text().count("up") == 2


def test_a_running_service_is_left_alone_and_stop_prevents_restarts(tmp_path):
    svc = _service(tmp_path, "import time; time.sleep(30)")
    sup = Supervisor([svc], POLICY, say=lambda line: None)
    proc = svc.start()
    try:
        sup.poll(now=svc.started_at + 100)
        assert svc.proc is proc and svc.restart_at is None
        sup.stop()
        proc.kill()
        proc.wait(10)
        sup.poll(now=svc.started_at + 200)
        assert svc.proc is proc and svc.restart_at is None and svc.restarts == 0
    finally:
        proc.kill()


def test_the_thread_restarts_a_killed_process(tmp_path):
    svc = _service(tmp_path, "import time; time.sleep(30)")
    sup = Supervisor([svc], RestartPolicy(initial_backoff_s=0.1), say=lambda line: None)
    first = svc.start()
    sup.start()
    try:
        first.kill()
        first.wait(10)
        for _ in range(100):
            if svc.restarts:
                break
            time.sleep(0.05)
        assert svc.restarts == 1 and svc.proc is not first and svc.proc.poll() is None  # type: ignore[union-attr]
    finally:
        sup.stop()
        svc.proc.kill()  # type: ignore[union-attr]
