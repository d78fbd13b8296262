"""The torch-free safetensors reader that validates uploads: every float dtype decodes exactly as
torch does, malformed files are refused (and the safetensors library refuses them too), and the
processes that validate uploads (gateway, adapter-store) never import torch."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as torch_load
from safetensors.torch import save as torch_save

from loraplex.lora.safetensors_numpy import (
    SafetensorsBytes,
    SafetensorsError,
    SafetensorsFile,
)

FLOATS = {
    "F32": torch.float32,
    "F64": torch.float64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@pytest.mark.parametrize("name", list(FLOATS))
def test_each_float_dtype_decodes_as_torch_does(name: str, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(7, 33, generator=g) * 40
    special = torch.tensor([0.0, -0.0, 1e-8, -3.5, 448.0, float("nan"), float("inf")])
    if name == "F8_E4M3":
        special = special[:-1]  # e4m3fn has no infinity (torch saturates it to NaN)
    tensors = {"w": base.to(FLOATS[name]), "s": special.to(FLOATS[name])}
    data = torch_save(tensors)
    reader = SafetensorsBytes(data)
    for key, t in tensors.items():
        want = t.float().numpy()
        got = reader.float32(key)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)  # NaN == NaN here
        assert reader.infos[key].is_float
    np.testing.assert_array_equal(_read_file(tmp_path, data, "w"), tensors["w"].float().numpy())


def test_integer_tensors_are_read_as_not_float() -> None:
    reader = SafetensorsBytes(torch_save({"i": torch.arange(6, dtype=torch.int32).view(2, 3)}))
    assert reader.infos["i"].shape == (2, 3) and not reader.infos["i"].is_float
    with pytest.raises(SafetensorsError):
        reader.float32("i")


def _opened(tmp_path: Path, data: bytes) -> SafetensorsFile:
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    with path.open("rb") as f:
        return SafetensorsFile(f)


def _read_file(tmp_path: Path, data: bytes, key: str) -> np.ndarray:
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    with path.open("rb") as f:
        return SafetensorsFile(f).float32(key)


def _raw(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def _entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


MALFORMED = {
    "empty": b"",
    "short": b"\x01\x02",
    "header beyond the file": _raw({}, length=10**6),
    "huge header length": _raw({}, length=2**63),
    "not json": _raw(b"{nope"),
    "not utf-8": _raw(b"\xff\xfe"),
    "a list": _raw([1, 2]),
    "unknown dtype": _raw({"w": _entry("F7", [1], 0, 4)}, b"\0" * 4),
    "size mismatch": _raw({"w": _entry("F32", [2], 0, 4)}, b"\0" * 4),
    "overlap": _raw({"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 0, 4)}, b"\0" * 4),
    "gap": _raw({"a": _entry("F32", [1], 4, 8)}, b"\0" * 8),
    "data beyond": _raw({"a": _entry("F32", [2], 0, 8)}, b"\0" * 4),
    "trailing data": _raw({"a": _entry("F32", [1], 0, 4)}, b"\0" * 8),
    "negative dim": _raw({"a": _entry("F32", [-1], 0, 0)}),
    "bool dim": _raw({"a": _entry("F32", [True], 0, 4)}, b"\0" * 4),
    "reversed offsets": _raw({"a": _entry("F32", [0], 4, 0)}, b"\0" * 4),
    "bad metadata": _raw({"__metadata__": {"k": 1}}),
    "entry not an object": _raw({"a": 3}),
    # red team: these got a 500 (json's RecursionError, and its ValueError past 4,300 digits)
    "header nested 100,000 deep": _raw(b"[" * 100_000 + b"]" * 100_000),
    "a 5,000-digit offset": _raw(
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1' + b"0" * 5000 + b"]}}",
        b"\0" * 4,
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_are_refused_as_the_library_refuses_them(case: str, tmp_path: Path) -> None:
    data = MALFORMED[case]
    with pytest.raises(SafetensorsError):
        SafetensorsBytes(data)
    with pytest.raises(SafetensorsError):
        _opened(tmp_path, data)
    with pytest.raises(Exception):  # noqa: B017 - the library raises several types
        torch_load(data)


def test_registration_processes_do_not_import_torch() -> None:
    code = (
        "import sys, loraplex.gateway.app, loraplex.adapter_store.app, "
        "loraplex.adapters.registration.registrar; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'triton'}); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
