"""The fork server's own process: imports what every service imports, then forks services on request.

``python -m loraplex.tooling.zygote`` is started by ``ForkServer`` (``forked.py``), which writes
one JSON line per request on its stdin and reads one JSON line per event on its stdout:

- ``{"start": id, "module": m, "args": [...], "env": {...}, "cwd": dir, "log": path}`` forks a
  service, answered ``{"started": id, "pid": pid}`` (or ``{"failed": id, "error": text}``);
- ``{"exited": pid, "code": c}`` follows when a service exits (``-N`` for signal N, as Popen).

It stays single-threaded and touches no GPU, so a fork of it is as good as a fresh interpreter
that already imported torch.  It exits when its stdin closes (the launcher is gone); the services
it forked run on, each in its own session, as exec'd ones would.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import sys
import traceback

# Everything slow that some service imports: torch and the engine, FastAPI, Redis and NATS clients.
PRELOAD = (
    "torch",
    "loraplex.worker.main",
    "loraplex.gateway.app",
    "loraplex.adapter_store.app",
    "loraplex.scheduler.service",
)
EXIT_CUDA = 3  # the server's exit code when it cannot fork safely (the launcher then execs)


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.cuda.is_initialized())


def main() -> None:
    # The protocol moves off fds 0/1, so a stray print of a preloaded module cannot corrupt it.
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # a missing extra costs its services the import, nothing else
            print(f"loraplex zygote: preload {name} failed: {e!r}", file=sys.stderr, flush=True)
    # What the preloads allocated moves to the collector's permanent generation: a collection in
    # a fork would otherwise write to every object's header and copy each page it touches.
    gc.freeze()
    if _cuda_initialised():  # a fork would inherit a CUDA context it cannot use: refuse
        print("loraplex zygote: CUDA was initialised by a preload; not forking", file=sys.stderr)
        os._exit(EXIT_CUDA)
    # setproctitle's setup, while the environment is still the one the process started with
    _set_title([sys.executable, "-m", "loraplex.tooling.zygote"])
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the handler exists so the wakeup fd fires
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the launcher's to handle
    pending = b""
    while True:
        ready, _, _ = select.select([ctl_in, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(ctl_out)
        if ctl_in in ready:
            data = os.read(ctl_in, 1 << 20)
            if not data:  # the launcher exited; skip the slow teardown of torch
                os._exit(0)
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _serve(json.loads(line), ctl_out, (ctl_in, ctl_out, wake_r, wake_w))


def _send(fd: int, message: dict) -> None:  # type: ignore[type-arg]
    os.write(fd, json.dumps(message).encode() + b"\n")


def _reap(ctl_out: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(ctl_out, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _serve(request: dict, ctl_out: int, own_fds: tuple[int, ...]) -> None:  # type: ignore[type-arg]
    try:
        pid = os.fork()
    except OSError as e:
        _send(ctl_out, {"failed": request["start"], "error": str(e)})
        return
    if pid == 0:
        os._exit(_become(request, own_fds))
    _send(ctl_out, {"started": request["start"], "pid": pid})


def _become(request: dict, own_fds: tuple[int, ...]) -> int:  # type: ignore[type-arg]
    """In the fork: run ``python -m module args`` as an exec'd interpreter would; its exit code."""
    import atexit
    import runpy

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd in own_fds:
        os.close(fd)
    os.setsid()
    _set_title(
        [sys.executable, "-m", request["module"], *request["args"]]
    )  # before the env changes
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path.insert(0, request["cwd"])  # as ``-m`` puts the working directory first
    module = request["module"]
    sys.argv = [module, *request["args"]]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()  # os._exit skips them; an exec'd interpreter runs them
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    if code < 0:  # die of the signal, as Python does on an unhandled Ctrl-C
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _set_title(argv: list[str]) -> None:
    """``ps`` and ``/proc/PID/cmdline`` show the service's own command, not the server's."""
    try:
        import setproctitle
    except ImportError:
        return  # an install without it: the services all read ``loraplex.tooling.zygote``
    setproctitle.setproctitle(" ".join(argv))


def _exit_code(code: object) -> int:
    """``sys.exit``'s argument as the interpreter turns it into a status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
