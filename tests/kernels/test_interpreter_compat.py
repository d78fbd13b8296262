"""The interpreter shim for Triton < 3.7 with numpy 2.5 (``triton_interpreter_compat``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from loraplex.kernels import triton_interpreter_compat


def test_a_one_element_array_becomes_an_index() -> None:
    # What Triton 3.6's interpreter hands __index__ for `lo = tl.load(ptr + i)`: numpy 2.5
    # refuses int() of a 1-d array, the shim squeezes it first.
    scalar = SimpleNamespace(handle=SimpleNamespace(data=np.array([7], dtype=np.int32)))
    assert triton_interpreter_compat._index(scalar) == 7
    assert list(range(2, triton_interpreter_compat._index(scalar), 2)) == [2, 4, 6]


def test_patch_wraps_the_interpreter_once() -> None:
    interpreter = pytest.importorskip("triton.runtime.interpreter")
    triton_interpreter_compat.patch()  # maybe already done by the kernel modules' import
    patched = interpreter._patch_lang_tensor
    assert patched.loraplex_compat
    assert triton_interpreter_compat.patch() is False  # never wrapped twice
    assert interpreter._patch_lang_tensor is patched

    class Tensor:
        pass

    class Scope:
        def __init__(self) -> None:
            self.changes: list[str] = []

        def set_attr(self, obj: object, name: str, value: object) -> None:
            self.changes.append(name)
            setattr(obj, name, value)

    scope = Scope()
    patched(Tensor, scope)
    assert scope.changes[-1] == "__index__"  # set last, so restored first
    scalar = Tensor()
    scalar.handle = SimpleNamespace(data=np.array([3]))  # type: ignore[attr-defined]
    assert list(range(scalar)) == [0, 1, 2]  # type: ignore[call-overload]


@pytest.mark.parametrize("loop_end", [1, 5])
def test_a_kernel_loop_bounded_by_loaded_scalars_runs_interpreted(loop_end: int) -> None:
    """The construct that failed on the device image: ``range(lo, hi, step)`` with bounds loaded
    from memory, run in the interpreter."""
    import torch
    import triton
    import triton.language as tl

    from tests.kernels.interpreted import kernels_interpreted

    if not kernels_interpreted():
        pytest.skip("kernels are compiled for the GPU here; the GPU tests cover the loop")

    @triton.jit
    def count_kernel(bounds_ptr, out_ptr):
        lo = tl.load(bounds_ptr)
        hi = tl.load(bounds_ptr + 1)
        total = 0
        for i in range(lo, hi, 1):
            total += i
        tl.store(out_ptr, total)

    bounds = torch.tensor([0, loop_end], dtype=torch.int32)
    out = torch.full((1,), -1, dtype=torch.int32)
    count_kernel[(1,)](bounds, out)
    assert out.item() == sum(range(loop_end))
