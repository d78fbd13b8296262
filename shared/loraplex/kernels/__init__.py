"""Kernels behind one interface: Triton on CUDA, pure-torch twins elsewhere (see dispatch)."""

from __future__ import annotations

from loraplex.kernels.dispatch import get_ops, use_triton

__all__ = ["get_ops", "use_triton"]
