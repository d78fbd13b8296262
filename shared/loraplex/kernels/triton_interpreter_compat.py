"""Keeps Triton's CPU interpreter working with numpy 2.5 on the Triton releases before 3.7.

Under ``TRITON_INTERPRET=1`` a scalar in a kernel (``tl.load(ptr + i)``) is a one-element array,
and Triton 3.6's interpreter turns it into a Python int for ``range(lo, hi, step)`` with
``int(array)``, which numpy 2.5 refuses for arrays that are not 0-dimensional ("only
0-dimensional arrays can be converted to Python scalars").  Triton 3.7+ squeezes the array
first; this does the same on older releases.  The device image (torch 2.11, Triton 3.6,
numpy 2.5) runs the interpreted tests that way.  Compiled kernels are not affected.
"""

from __future__ import annotations

from typing import Any


def _index(tensor: Any) -> int:
    return int(tensor.handle.data.squeeze())


def patch() -> bool:
    """Make the interpreter's ``tensor.__index__`` squeeze first; True when it was patched."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "loraplex_compat", False):
        return False

    def patch_lang_tensor(tensor: Any, scope: Any) -> None:
        original(tensor, scope)
        # The scope restores attributes last-in first-out, so this one is undone first.
        scope.set_attr(tensor, "__index__", _index)

    patch_lang_tensor.loraplex_compat = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
