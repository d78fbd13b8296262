"""Upload spool files left by a killed store are removed at the next start; live owners' are kept."""

from __future__ import annotations

import os
import subprocess
import sys

from loraplex.adapters.registration.spool import Spool, sweep_orphans


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_files_of_dead_owners_are_swept_and_live_ones_kept(tmp_path):
    mine = Spool.of_bytes(b"live upload", str(tmp_path))
    orphan = tmp_path / f"loraplex-upload-{_dead_pid()}-abc123.safetensors"
    orphan.write_bytes(b"left by a SIGKILLed store")
    unrelated = tmp_path / "loraplex-upload-notapid.safetensors"
    unrelated.write_bytes(b"x")
    assert sweep_orphans(str(tmp_path)) == 1
    assert not orphan.exists() and mine.path.exists() and unrelated.exists()
    assert mine.path.name.startswith(f"loraplex-upload-{os.getpid()}-")
    mine.delete()
    assert not mine.path.exists()
