"""Kernels behind one interface: Triton on CUDA, pure-torch twins elsewhere (see dispatch)."""

from __future__ import annotations

from types import ModuleType

import torch

from loraplex.kernels import torch_ref


def get_ops(device: torch.device) -> ModuleType:
    """The kernel namespace for ``device`` (sgmv/bgmv shrink/expand, store_kv, attention)."""
    try:
        from loraplex.kernels.dispatch import get_ops as _dispatch
    except ImportError:
        return torch_ref
    return _dispatch(device)
