"""``DiskCopies``: a worker's adapter copies on disk.  Plain file IO in a temporary directory, with a
clock the tests move (mtimes are set from it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplex.adapters.disk_copies import SUFFIX, DiskCopies

CONFIG = b'{"r": 8}'
WEIGHTS = bytes(range(256)) * 40  # 10 KiB


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def copies(root: Path, budget: int = 1 << 20, trust_s: float = 600.0) -> tuple[DiskCopies, Clock]:
    clock = Clock()
    return DiskCopies(root, budget, trust_s, clock=clock), clock


def files(root: Path) -> list[Path]:
    return sorted(root.glob(f"*{SUFFIX}"))


def test_a_kept_copy_comes_back_whole(tmp_path: Path) -> None:
    disk, _ = copies(tmp_path)
    disk.keep("t/a", "3", CONFIG, WEIGHTS)
    got = disk.recall("t/a")
    assert got is not None
    assert (got.adapter_id, got.version, got.config_bytes, got.weights_bytes) == (
        "t/a",
        "3",
        CONFIG,
        WEIGHTS,
    )
    assert disk.recall("t/b") is None and disk.recall("u/a") is None  # ids never meet


def test_a_copy_is_trusted_only_within_the_window_since_its_last_confirmation(
    tmp_path: Path,
) -> None:
    disk, clock = copies(tmp_path, trust_s=600)
    disk.keep("t/a", "1", CONFIG, WEIGHTS)
    clock.now += 601
    assert disk.recall("t/a") is None  # nobody confirmed it: it may be stale
    assert len(files(tmp_path)) == 1  # aged, not damaged: kept (a fetch confirms it again)
    disk.confirm()  # this process kept it and no event dropped it: current
    assert disk.recall("t/a") is not None
    clock.now += 601
    assert disk.recall("t/a") is None
    disk.keep("t/a", "1", CONFIG, WEIGHTS)  # the same version fetched again: confirmed
    assert disk.recall("t/a") is not None

    # A new process (a restarted worker) confirms only what it kept itself: it may have missed
    # an event while it was down.
    later, later_clock = copies(tmp_path, trust_s=600)
    later_clock.now = clock.now + 601
    later.confirm()
    assert later.recall("t/a") is None
    later.keep("t/a", "1", CONFIG, WEIGHTS)
    later_clock.now += 601
    later.confirm()
    assert later.recall("t/a") is not None
    later.drop("t/a")  # an event: nothing left to confirm
    later.confirm()
    assert later.recall("t/a") is None and files(tmp_path) == []


def test_a_new_version_replaces_the_old_and_drop_removes_every_copy(tmp_path: Path) -> None:
    disk, _ = copies(tmp_path)
    disk.keep("t/a", "1", CONFIG, WEIGHTS)
    disk.keep("t/b", "1", CONFIG, WEIGHTS)
    disk.keep("t/a", "2", CONFIG, WEIGHTS[::-1])
    got = disk.recall("t/a")
    assert got is not None and (got.version, got.weights_bytes) == ("2", WEIGHTS[::-1])
    assert len(files(tmp_path)) == 2
    disk.drop("t/a")
    assert disk.recall("t/a") is None and disk.recall("t/b") is not None


def test_same_version_with_other_bytes_is_rewritten(tmp_path: Path) -> None:
    """A store rebuilt from scratch numbers versions from 1 again: content decides, not the name."""
    disk, _ = copies(tmp_path)
    disk.keep("t/a", "1", CONFIG, WEIGHTS)
    disk.keep("t/a", "1", CONFIG, b"other weights")
    got = disk.recall("t/a")
    assert got is not None and got.weights_bytes == b"other weights"


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty", "huge header"])
def test_a_damaged_copy_is_dropped_never_served(tmp_path: Path, damage: str) -> None:
    disk, _ = copies(tmp_path)
    disk.keep("t/a", "1", CONFIG, WEIGHTS)
    (path,) = files(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF
    elif damage == "truncate":
        data = data[:-100]
    elif damage == "garbage":
        data = bytearray(b"not a copy at all" * 10)
    elif damage == "empty":
        data = bytearray()
    else:
        data[6:10] = (2**31).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    assert disk.recall("t/a") is None
    assert files(tmp_path) == []
    disk.keep("t/a", "1", CONFIG, WEIGHTS)  # and the next fetch writes a good one
    assert disk.recall("t/a") is not None


def test_a_copy_under_another_id_s_name_is_not_served(tmp_path: Path) -> None:
    disk, _ = copies(tmp_path)
    disk.keep("t/a", "1", CONFIG, WEIGHTS)
    (path,) = files(tmp_path)
    other = tmp_path / f"{DiskCopies._stem('u/a')}.v1{SUFFIX}"
    path.rename(other)  # its header still says t/a
    assert disk.recall("u/a") is None


def test_the_budget_drops_the_least_recently_confirmed_first(tmp_path: Path) -> None:
    entry = len(WEIGHTS) + 1000  # a copy's size, header included, rounded up
    disk, clock = copies(tmp_path, budget=3 * entry)
    for i, aid in enumerate(("t/a", "t/b", "t/c")):
        clock.now += 1
        disk.keep(aid, "1", CONFIG, WEIGHTS + bytes([i]))
    clock.now += 1
    disk.keep("t/a", "1", CONFIG, WEIGHTS + bytes([0]))  # fetched again: now the most recent
    clock.now += 1
    disk.keep("t/d", "1", CONFIG, WEIGHTS)
    kept = {aid for aid in ("t/a", "t/b", "t/c", "t/d") if disk.recall(aid) is not None}
    assert kept == {"t/a", "t/c", "t/d"}
    disk.keep("t/huge", "1", CONFIG, bytes(4 * entry))  # larger than the budget: not kept
    assert disk.recall("t/huge") is None and len(files(tmp_path)) == 3


def test_leftovers_of_a_killed_write_are_removed_and_versions_are_checked(tmp_path: Path) -> None:
    (tmp_path / f"abc.v1{SUFFIX}.123.456.tmp").write_bytes(b"half a file")
    disk, _ = copies(tmp_path)
    assert list(tmp_path.glob("*.tmp")) == []
    with pytest.raises(ValueError):
        disk.keep("t/a", "../../etc", CONFIG, WEIGHTS)  # never a path from a version string
    with pytest.raises(ValueError):
        DiskCopies(tmp_path, 0, 600)
    with pytest.raises(ValueError):
        DiskCopies(tmp_path, 1, float("nan"))


def test_the_worker_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from loraplex.worker.settings import build_parser, settings_from_args

    parse = build_parser("decode").parse_args
    s = settings_from_args(parse(["--model", "m"]))
    assert (s.adapter_disk_cache, s.adapter_disk_cache_mb, s.adapter_disk_trust_s) == (
        "",
        4096,
        600,
    )
    argv = ["--model", "m", "--adapter-disk-cache", "/c", "--adapter-disk-cache-mb", "7"]
    s = settings_from_args(parse([*argv, "--adapter-disk-trust", "0"]))
    assert (s.adapter_disk_cache, s.adapter_disk_cache_mb, s.adapter_disk_trust_s) == ("/c", 7, 0)
    for flag, bad in [
        ("--adapter-disk-cache-mb", "0"),
        ("--adapter-disk-cache-mb", "1.5"),
        ("--adapter-disk-trust", "-1"),
        ("--adapter-disk-trust", "nan"),
        ("--adapter-disk-trust", "inf"),
    ]:
        with pytest.raises(SystemExit):
            parse(["--model", "m", flag, bad])
        assert flag in capsys.readouterr().err


def test_a_write_that_fails_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    disk, _ = copies(tmp_path)

    def full_disk(src, dst):  # the rename of a finished write fails (ENOSPC, EROFS ...)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("loraplex.adapters.disk_copies.os.replace", full_disk)
    with pytest.raises(OSError):
        disk.keep("t/a", "1", CONFIG, WEIGHTS)
    assert list(tmp_path.iterdir()) == [] and disk.recall("t/a") is None
