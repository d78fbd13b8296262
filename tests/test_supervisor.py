"""The supervisor restarts real child processes that exit, with doubling backoff that resets after
a stable run, and never after ``stop``."""

from __future__ import annotations

import signal
import sys
import time
from types import SimpleNamespace

from loraplex.tooling.supervisor import RestartPolicy, Service, Supervisor

POLICY = RestartPolicy(
    initial_backoff_s=1.0, max_backoff_s=4.0, stable_after_s=10.0, kills_at_once=1
)


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


def test_a_service_killed_after_it_came_up_restarts_at_once(tmp_path):
    """Readiness separates a crash loop (never ready) from a healthy service that was shot."""
    ready = {"now": False}
    svc = _service(tmp_path, "import time; time.sleep(30)")
    svc.ready_url = "http://probe"
    lines: list[str] = []
    sup = Supervisor([svc], POLICY, say=lines.append, probe=lambda url: ready["now"])
    try:
        first = svc.start()
        t0 = svc.started_at
        svc.quick_failures = 3  # it had been dying quickly before this run
        sup.poll(now=t0 + 0.1)  # probed: not ready yet
        assert svc.ready_at is None
        ready["now"] = True
        sup.poll(now=t0 + 0.3)  # within the probe interval: not probed again
        assert svc.ready_at is None
        sup.poll(now=t0 + 1.0)
        assert svc.ready_at == t0 + 1.0
        first.kill()
        first.wait(10)
        sup.poll(now=t0 + 2.0)  # ready 1 s, then SIGKILLed: no backoff, started in this pass
        assert svc.quick_failures == 1 and svc.restarts == 1 and svc.proc is not first
        assert "restarting in 0.0s" in lines[-2] and "restarted svc" in lines[-1]
        assert svc.ready_at is None  # the new run must come up again
        # Killed again before it was ever ready: that counts as a quick failure.
        ready["now"] = False
        t1 = svc.started_at
        svc.proc.kill()  # type: ignore[union-attr]
        svc.proc.wait(10)  # type: ignore[union-attr]
        sup.poll(now=t1 + 2.0)
        assert svc.quick_failures == 2 and svc.restart_at == t1 + 2.0 + 2.0
    finally:
        svc.proc.kill()  # type: ignore[union-attr]


def _ready_then_ended(tmp_path, end, ready_for: float) -> Service:
    """A service that was ready for ``ready_for`` s, had failed quickly twice before, then
    ``end(proc)`` ended it; polled once after that."""
    no_core = "import resource, time; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); "
    svc = _service(tmp_path, no_core + "time.sleep(30)")
    svc.ready_url = "http://probe"
    sup = Supervisor([svc], POLICY, say=lambda line: None, probe=lambda url: True)
    proc = svc.start()
    try:
        svc.quick_failures = 2
        t0 = svc.started_at
        sup.poll(now=t0 + 1.0)
        assert svc.ready_at == t0 + 1.0
        end(proc)
        proc.wait(10)
        sup.poll(now=t0 + 1.0 + ready_for)
        return svc
    finally:
        proc.kill()
        if svc.proc is not proc:
            svc.proc.kill()  # type: ignore[union-attr]


def test_an_outside_signal_after_readiness_restarts_at_once(tmp_path):
    for sig in (signal.SIGKILL, signal.SIGTERM):
        svc = _ready_then_ended(tmp_path, lambda p, sig=sig: p.send_signal(sig), 0.5)
        assert svc.restarts == 1 and svc.quick_failures == 1, sig


def test_a_crash_after_a_short_readiness_still_backs_off(tmp_path):
    """A fault of its own (SIGSEGV) soon after it was ready is no outside kill: backoff doubles."""
    svc = _ready_then_ended(tmp_path, lambda p: p.send_signal(signal.SIGSEGV), 0.5)
    assert svc.restarts == 0 and svc.quick_failures == 3
    assert svc.restart_at == svc.started_at + 1.5 + POLICY.delay(3)
    # The same crash after a stable readiness: the first delay again, not at once.
    svc = _ready_then_ended(tmp_path, lambda p: p.send_signal(signal.SIGSEGV), 5.0)
    assert svc.restarts == 0 and svc.quick_failures == 1
    assert svc.restart_at == svc.started_at + 6.0 + POLICY.initial_backoff_s


def test_a_long_run_without_readiness_killed_restarts_at_once(tmp_path):
    """No ``ready_url``: a run past ``stable_after_s`` had come up."""
    svc = _service(tmp_path, "import time; time.sleep(30)")
    sup = Supervisor([svc], POLICY, say=lambda line: None)
    first = svc.start()
    try:
        first.kill()
        first.wait(10)
        sup.poll(now=svc.started_at + POLICY.stable_after_s)
        assert svc.restarts == 1 and svc.proc is not first
    finally:
        svc.proc.kill()  # type: ignore[union-attr]


def test_readiness_is_probed_over_http(tmp_path):
    """The default probe against a real child HTTP server, and a refused port."""
    import socket

    from loraplex.tooling.ports import free_port
    from loraplex.tooling.supervisor import http_ready

    port = free_port()
    svc = _service(
        tmp_path,
        f"import http.server as h; h.test(h.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')",
    )
    svc.ready_url = f"http://127.0.0.1:{port}/"
    sup = Supervisor([svc], POLICY, say=lambda line: None)
    svc.start()
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        sup.poll()
        assert svc.ready_at is not None
        assert not http_ready(f"http://127.0.0.1:{free_port()}/")
    finally:
        svc.proc.kill()  # type: ignore[union-attr]
        svc.proc.wait(10)  # type: ignore[union-attr]


class _Clock:
    t = 100.0


class _FakePopen:
    """What the supervisor reads of a child: its pid, ``poll`` and ``returncode`` (set by a test)."""

    pids = iter(range(1000, 2000))

    def __init__(self, *args, **kwargs) -> None:
        self.pid = next(self.pids)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


def _fake_service(tmp_path, monkeypatch) -> tuple[Supervisor, Service, _Clock]:
    """A ready-probed service whose ``start`` spawns no process and reads the test's clock."""
    from loraplex.tooling import supervisor

    clock = _Clock()
    monkeypatch.setattr(supervisor, "time", SimpleNamespace(monotonic=lambda: clock.t))
    fake = lambda argv, log: _FakePopen()  # noqa: E731
    svc = Service("svc", ["svc"], tmp_path / "svc.log", ready_url="http://probe", starter=fake)
    sup = Supervisor([svc], POLICY, say=lambda line: None, probe=lambda url: True)
    svc.start()
    return sup, svc, clock


def _end_run(
    sup: Supervisor,
    svc: Service,
    clock: _Clock,
    ready_after: float | None = 1.0,
    up_s: float = 2.0,
    code: int = -signal.SIGKILL,
) -> float:
    """The current run is ready ``ready_after`` s after its start (None: never), then exits with
    ``code`` ``up_s`` s later; returns the delay the supervisor chose, after which the clock stands
    at the restart, done."""
    clock.t = svc.started_at
    if ready_after is not None:
        clock.t += ready_after
        sup.poll(now=clock.t)
        assert svc.ready_at == clock.t
    svc.proc.returncode = code  # type: ignore[union-attr]
    clock.t += up_s
    restarts = svc.restarts
    sup.poll(now=clock.t)
    if svc.restarts > restarts:  # restarted in the pass that noticed the exit
        return 0.0
    delay = svc.restart_at - clock.t  # type: ignore[operator]
    clock.t = svc.restart_at  # type: ignore[assignment]
    sup.poll(now=clock.t)
    assert svc.restarts == restarts + 1 and svc.started_at == clock.t
    return delay


def test_one_outside_kill_soon_after_ready_restarts_at_once(tmp_path, monkeypatch):
    sup, svc, clock = _fake_service(tmp_path, monkeypatch)
    assert _end_run(sup, svc, clock) == 0.0
    assert svc.quick_kills == 1 and svc.restarts == 1 and svc.ready_at is None


def test_outside_kills_in_a_row_soon_after_ready_back_off(tmp_path, monkeypatch):
    """An OOM loop: ready, then SIGKILLed (or SIGTERMed) a few seconds later, again and again."""
    sup, svc, clock = _fake_service(tmp_path, monkeypatch)
    codes = [-signal.SIGKILL, -signal.SIGTERM, -signal.SIGKILL, -signal.SIGKILL, -signal.SIGKILL]
    delays = [_end_run(sup, svc, clock, code=code) for code in codes]
    assert delays == [0.0, 1.0, 2.0, 4.0, 4.0]  # POLICY: 1 s doubling, capped at 4 s
    assert svc.quick_kills == 5


def test_other_exits_between_kills_do_not_reset_the_count(tmp_path, monkeypatch):
    sup, svc, clock = _fake_service(tmp_path, monkeypatch)
    assert _end_run(sup, svc, clock) == 0.0
    assert _end_run(sup, svc, clock) == 1.0
    # A crash before it was ever ready backs off as a crash loop does, and is no healthy run.
    assert _end_run(sup, svc, clock, ready_after=None, up_s=0.5, code=1) == 2.0
    assert svc.quick_kills == 2 and svc.quick_failures == 2
    assert _end_run(sup, svc, clock) == 2.0
    assert svc.quick_kills == 3


def test_a_long_healthy_run_restarts_at_once_again(tmp_path, monkeypatch):
    sup, svc, clock = _fake_service(tmp_path, monkeypatch)
    assert [_end_run(sup, svc, clock) for _ in range(3)] == [0.0, 1.0, 2.0]
    # Ready for stable_after_s, then killed: the OOM loop is over, a fresh series begins.
    assert _end_run(sup, svc, clock, up_s=POLICY.stable_after_s) == 0.0
    assert svc.quick_kills == 0
    assert [_end_run(sup, svc, clock) for _ in range(2)] == [0.0, 1.0]
    # A long run ended by a crash resets the count too.
    assert _end_run(sup, svc, clock, up_s=POLICY.stable_after_s, code=1) == POLICY.delay(1)
    assert svc.quick_kills == 0 and _end_run(sup, svc, clock) == 0.0


def test_a_slow_start_or_a_short_readiness_is_no_healthy_run(tmp_path, monkeypatch):
    """Up counts from readiness, and ``ready_stable_s`` is too short to clear an OOM loop."""
    sup, svc, clock = _fake_service(tmp_path, monkeypatch)
    assert _end_run(sup, svc, clock) == 0.0
    # Loading took longer than stable_after_s; killed 2 s after it was ready.
    assert _end_run(sup, svc, clock, ready_after=POLICY.stable_after_s + 10.0) == 1.0
    # Ready past ready_stable_s, but not for stable_after_s.
    up_s = POLICY.ready_stable_s + 1.0
    assert up_s < POLICY.stable_after_s
    assert _end_run(sup, svc, clock, up_s=up_s) == 2.0
    assert svc.quick_kills == 3
