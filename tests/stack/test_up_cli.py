"""`loraplex up` as a user runs it: prints the URL, serves, and Ctrl-C stops every process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from loraplex.tooling.demo import write_demo_model
from loraplex.tooling.ports import free_port


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
            if text in cmdline and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process below ``pid`` (services are forks of its fork server)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            parents[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    found: dict[int, str] = {}
    level = {pid}
    while level:
        level = {p for p, (ppid, _) in parents.items() if ppid in level}
        found.update({p: parents[p][1] for p in level})
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_serves_and_ctrl_c_stops_everything(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    # vLLM's --lora-modules: an adapter of the demo model (the same one up writes), by path
    sql = write_demo_model(tmp_path / "mine", num_adapters=1).adapters[0].path
    cmd = [
        sys.executable,
        "-m",
        "loraplex.tooling.cli",
        "up",
        "--port",
        str(port),
        "--run-dir",
        str(run_dir),
    ]
    proc = subprocess.Popen(
        [*cmd, "--device", "cpu", "--lora-modules", f"sql={sql}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = []
        deadline = time.monotonic() + 180
        for line in proc.stdout:  # type: ignore[union-attr]
            banner.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        text = "".join(banner)
        assert f"http://127.0.0.1:{port}/v1" in text and "curl" in text, text
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()
        assert any(m["id"].startswith("demo-lora-") for m in models["data"])
        assert "--lora-modules: serving sql" in text
        sql_card = next(m for m in models["data"] if m["id"] == "sql")
        assert sql_card["root"] == str(sql.resolve())  # vLLM: the path it was loaded from
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": "sql", "prompt": "Hello", "max_tokens": 3},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        below = _descendants(proc.pid)
        for part in ("nats-server", "redis-server", "loraplex.adapter_store", "loraplex.scheduler",
                     "loraplex.prefill", "loraplex.decode", "loraplex.gateway"):  # fmt: skip
            assert any(part in cmdline for cmdline in below.values()), (part, below)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        time.sleep(0.5)
        assert {p: c for p, c in below.items() if _alive(p)} == {}
        assert _processes_mentioning(str(run_dir)) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_up_stops_with_a_clear_error_for_a_bad_lora_module(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "loraplex.tooling.cli", "up", "--port", str(free_port()),
        "--run-dir", str(run_dir), "--device", "cpu", "--lora-modules", f"sql={tmp_path / 'nothing'}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "loraplex up: --lora-modules sql=" in proc.stderr and "Traceback" not in proc.stderr
    assert _processes_mentioning(str(run_dir)) == []  # nats-server and redis-server stopped
