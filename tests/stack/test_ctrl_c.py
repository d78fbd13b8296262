"""Ctrl-C on ``loraplex up`` drains like SIGTERM: a stream in flight finishes with ``[DONE]``,
every process exits, and NATS and Redis outlive the services that need them (issue 16).

The launcher runs in its own process group, as a shell's foreground job does, and the test sends
SIGINT to that whole group with ``os.killpg``: what a terminal does on Ctrl-C.  The same stack's
logs must name the ports the services really listen on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai

from loraplex.tooling.ports import free_port
from tests.stack.test_up_cli import _alive, _descendants

MAX_TOKENS = 300  # long enough to be running when the signal lands, short of the 30 s drain bound
LOGS_OF_SERVICES = ("gateway", "adapter-store", "scheduler", "prefill-0", "decode-0")


def _start_up(run_dir: Path, port: int) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable, "-m", "loraplex.tooling.cli", "up", "--port", str(port),
        "--run-dir", str(run_dir), "--device", "cpu", "--max-num-seqs", "4",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    banner = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # type: ignore[union-attr]
        banner.append(line)
        if "Press Ctrl-C" in line or time.monotonic() > deadline:
            break
    text = "".join(banner)
    assert "Press Ctrl-C" in text, text
    return proc, text


def test_ctrl_c_drains_a_stream_in_flight_then_stops_everything(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    proc, banner = _start_up(run_dir, port)
    try:
        below = _descendants(proc.pid)  # the servers, the services and their fork server
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120
        )
        model = next(m.id for m in client.models.list().data if m.id.startswith("demo-lora-"))
        stream = client.completions.create(
            model=model,
            prompt="Once upon a time",
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        chunks = iter(stream)
        first = next(chunks)
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole foreground group
        rest = list(chunks)  # ends at [DONE]; a cut stream raises instead
        assert rest, "the stream ended before the signal: nothing was in flight"
        finish = [c.choices[0].finish_reason for c in [first, *rest] if c.choices]
        assert finish[-1] == "length", finish[-3:]
        text = "".join(c.choices[0].text for c in [first, *rest] if c.choices)
        assert text, "no text streamed"
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "stopping loraplex" in out, out
        time.sleep(0.5)
        assert {p: c for p, c in below.items() if _alive(p)} == {}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # NATS and Redis stopped last: no service lost its connection while it drained.
    for name in LOGS_OF_SERVICES:
        log = (run_dir / f"{name}.log").read_text(errors="replace")
        assert "disconnected from NATS" not in log and "NATS error" not in log, (name, log[-3000:])
        assert "Traceback" not in log, (name, log[-3000:])
    # The logs name the ports the services listen on (the gateway's embedded adapter routes are
    # served on the gateway's own port, not on the adapter store's default 8100).
    gateway_log = (run_dir / "gateway.log").read_text(errors="replace")
    assert f"adapter-store ready on 127.0.0.1:{port} " in gateway_log, gateway_log[-3000:]
    store_log = (run_dir / "adapter-store.log").read_text(errors="replace")
    named = re.findall(r"adapter-store ready on 127\.0\.0\.1:(\d+)", store_log)
    listening = re.findall(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", store_log)
    assert named and named == listening, store_log[-3000:]
