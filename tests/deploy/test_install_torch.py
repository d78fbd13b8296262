"""scripts/install-torch.sh picks the torch build (issue 16): its decisions, via --dry-run.

Nothing is installed: a fake ``nvidia-smi`` on PATH stands for the GPU, a fake venv python for
the installed torch, and a real local HTTP server for a reachable wheel index (a closed port
for an unreachable one).
"""

from __future__ import annotations

import functools
import http.server
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-torch.sh"


@pytest.fixture(scope="module")
def index_url(tmp_path_factory) -> Iterator[str]:
    """A wheel index that answers (the script probes <index>/torch/)."""
    root = tmp_path_factory.mktemp("index")
    (root / "torch").mkdir()
    (root / "torch" / "index.html").write_text("<html></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/whl/cpu"


def _exe(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def run(
    tmp_path: Path,
    gpu: str | None,
    torch: str,
    cpu_index: str,
    **env: str,
) -> tuple[str, str]:
    """(pip command printed, decision) for a host with ``gpu`` ('ok', 'broken', None) and a
    venv whose torch is ``torch`` ('none', 'cpu', 'cuda')."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    if gpu == "ok":
        _exe(smi, 'echo "GPU 0: NVIDIA H200 (UUID: GPU-1234)"\n')
    elif gpu == "broken":  # installed, but no driver loaded
        _exe(smi, 'echo "NVIDIA-SMI has failed because it could not communicate" >&2; exit 9\n')
    elif smi.exists():
        smi.unlink()
    # The fake venv python answers the script's metadata query with the installed build.
    py = _exe(tmp_path / "python", f'cat >/dev/null; echo "{torch}"\n')
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        env={**base, "PY": str(py), "TORCH_CPU_INDEX": cpu_index, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().replace(str(py), "PY"), out.stderr.strip()


def test_no_gpu_takes_the_cpu_index_when_it_answers(tmp_path, index_url) -> None:
    cmd, why = run(tmp_path, None, "none", index_url)
    assert cmd == f"PY -m pip install -q --index-url {index_url} torch==2.13.0"
    assert "no NVIDIA GPU: the CPU build" in why


def test_no_gpu_falls_back_to_the_plain_requirement(tmp_path, closed_url) -> None:
    cmd, why = run(tmp_path, None, "none", closed_url)
    assert cmd == "PY -m pip install -q torch==2.13.0"
    assert f"{closed_url} does not answer: falling back" in why


def test_a_broken_nvidia_smi_is_no_gpu(tmp_path, index_url) -> None:
    cmd, _ = run(tmp_path, "broken", "none", index_url)
    assert f"--index-url {index_url}" in cmd


def test_gpu_installs_or_keeps_a_cuda_build(tmp_path, index_url) -> None:
    cmd, why = run(tmp_path, "ok", "none", index_url)
    assert cmd == "PY -m pip install -q torch==2.13.0", "the default index: a CUDA build"
    assert "NVIDIA GPU found" in why
    cmd, _ = run(tmp_path, "ok", "cuda", index_url)
    assert cmd == "PY -m pip install -q torch==2.13.0"  # pip keeps a satisfying CUDA build


def test_gpu_replaces_a_cpu_build(tmp_path, index_url) -> None:
    cmd, why = run(tmp_path, "ok", "cpu", index_url)
    assert cmd == "PY -m pip install -q --force-reinstall torch==2.13.0"
    assert "CPU build" in why


@pytest.mark.parametrize("gpu", ["ok", None])
def test_torch_index_and_spec_override(tmp_path, index_url, gpu) -> None:
    cu = index_url + "cu128"
    cmd, _ = run(
        tmp_path, gpu, "none", index_url, TORCH_INDEX=cu if gpu else index_url,
        TORCH_SPEC="torch==2.12.1",
    )  # fmt: skip
    assert cmd == f"PY -m pip install -q --index-url {cu if gpu else index_url} torch==2.12.1"


def test_empty_spec_keeps_torch(tmp_path, index_url) -> None:
    cmd, why = run(tmp_path, "ok", "cpu", index_url, TORCH_SPEC="")
    assert cmd == "" and "keeping the torch that is installed" in why


def test_the_makefile_setup_runs_the_script() -> None:
    """`make setup` goes through the script (make -n prints the recipe, runs nothing)."""
    out = subprocess.run(
        ["make", "-n", "-B", "setup", "VENV=/nonexistent-venv", "TORCH_INDEX=http://x/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "install-torch.sh" in ln)
    assert "PY=/nonexistent-venv/bin/python" in line and 'TORCH_INDEX="http://x/"' in line
    assert 'pip install -q "torch' not in out.stdout
