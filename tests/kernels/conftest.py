"""Kernel tests: run the Triton kernels under the CPU interpreter when there is no GPU.

``TRITON_INTERPRET`` is read when a kernel is decorated, so it must be set before the kernel
modules (and ideally triton itself) are imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:  # the library may not be installed in this environment: use the in-repo copy
    import loraplex  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
