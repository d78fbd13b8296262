"""PEFT adapter files for the demo model, as bytes to upload or folders to register by path, with
helpers that break one thing at a time (a config field, the tensors, an extra file)."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from loraplex.tooling.demo.demo_model import demo_model_spec
from loraplex.tooling.demo.model_writer import write_random_adapter

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE = "adapter_model.bin"
README = "README.md"
DELETE = object()  # a config value meaning "leave this key out"
TEMPLATE_TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class AdapterFiles:
    """An adapter's config and tensors, plus any extra files of its folder (name -> bytes)."""

    config: dict[str, Any] = field(repr=False)
    tensors: dict[str, torch.Tensor] = field(repr=False)
    extras: dict[str, bytes] = field(default_factory=dict, repr=False)
    raw_config: bytes | None = field(
        default=None, repr=False
    )  # sent instead of ``config`` (bytes that are not JSON, ...)

    @classmethod
    def template(cls, rank: int = 4, alpha: float = 8.0) -> AdapterFiles:
        """A valid adapter for the demo model (q_proj and v_proj of every layer)."""
        with tempfile.TemporaryDirectory() as d:
            write_random_adapter(
                Path(d), demo_model_spec(), rank=rank, alpha=alpha, targets=TEMPLATE_TARGETS, seed=5
            )
            config = json.loads((Path(d) / CONFIG).read_text())
            tensors = load_file(str(Path(d) / WEIGHTS))
        return cls(config, tensors)

    def with_config(self, **changes: Any) -> AdapterFiles:
        config = dict(self.config)
        for key, value in changes.items():
            if value is DELETE:
                config.pop(key, None)
            else:
                config[key] = value
        return replace(self, config=config)

    def with_raw_config(self, raw: bytes) -> AdapterFiles:
        return replace(self, raw_config=raw)

    def with_tensors(self, fn: Callable[[str, torch.Tensor], torch.Tensor | None]) -> AdapterFiles:
        """Each tensor replaced by ``fn(name, tensor)``; None keeps it."""
        out = {}
        for name, t in self.tensors.items():
            new = fn(name, t)
            out[name] = t if new is None else new
        return replace(self, tensors=out)

    def with_extras(self, files: dict[str, bytes]) -> AdapterFiles:
        """The same folder with more files (file name -> bytes)."""
        return replace(self, extras={**self.extras, **files})

    def without_weights(self) -> AdapterFiles:
        return replace(self, tensors={})

    def config_bytes(self) -> bytes:
        if self.raw_config is not None:
            return self.raw_config
        return json.dumps(self.config).encode()  # ASCII escapes: lone surrogates travel as-is

    def weights_bytes(self) -> bytes:
        return save({k: v.contiguous() for k, v in self.tensors.items()}, {"format": "pt"})

    def files(self) -> dict[str, bytes]:
        """Every file of the folder, by file name."""
        out = {CONFIG: self.config_bytes()}
        if self.tensors:
            out[WEIGHTS] = self.weights_bytes()
        return {**out, **self.extras}

    def multipart(self, name: str, **fields: str) -> dict[str, Any]:
        """httpx keyword arguments of a multipart upload of every file under ``files``.  Form
        values are sent as UTF-8 with lone surrogates kept (as the bytes a bad client sends)."""
        files = [
            ("files", (fname, data, "application/octet-stream"))
            for fname, data in self.files().items()
        ]
        data = {k: v.encode("utf-8", "surrogatepass") for k, v in {"name": name, **fields}.items()}
        return {"files": files, "data": data}

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for fname, data in self.files().items():
            (folder / fname).write_bytes(data)
        return folder


def fill(value: float) -> Callable[[str, torch.Tensor], torch.Tensor]:
    return lambda _, t: torch.full_like(t, value)


def poke(value: float) -> Callable[[str, torch.Tensor], torch.Tensor | None]:
    """One element of the first lora_B tensor set to ``value``."""
    first: list[str] = []

    def fn(name: str, t: torch.Tensor) -> torch.Tensor | None:
        if "lora_B" not in name or first:
            return None
        first.append(name)
        t = t.clone()
        t.view(-1)[0] = value
        return t

    return fn


def rank_zero(_: str, t: torch.Tensor) -> torch.Tensor:
    """lora_A [r, in] -> [0, in], lora_B [out, r] -> [out, 0]."""
    return t[:0] if t.shape[0] < t.shape[1] else t[:, :0]


def pickle_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """What ``save_pretrained(safe_serialization=False)`` writes: a torch pickle."""
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return buf.getvalue()
