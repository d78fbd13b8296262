"""Kernel tests: run the Triton kernels under the CPU interpreter when there is no GPU.

``TRITON_INTERPRET`` is read when a kernel is decorated, so it must be set before the kernel
modules (and ideally triton itself) are imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton defines its own jit helpers when it is imported: imported before this line, the
        # interpreted kernels fail with "Cannot call @triton.jit'd outside of the scope of a
        # kernel".  Pytest imports every test module while collecting, and this directory comes
        # after others: one of them imports triton at module level (peft and transformers do).
        raise pytest.UsageError(
            "triton was imported before tests/kernels could set TRITON_INTERPRET=1: a test "
            "module collected earlier imports it (or peft/transformers) at module level; "
            "import it inside the test instead"
        )
    os.environ["TRITON_INTERPRET"] = "1"

try:  # the library may not be installed in this environment: use the in-repo copy
    import loraplex  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))


# ---- compile-only check of the GPU code path (works without a GPU) --------------------------
# The interpreter never runs Triton's compiler, so a kernel can pass every CPU test and still
# fail to build for a GPU.  This runs the public wrappers in a subprocess with the interpreter off,
# records each launch instead of running it, and compiles it for sm_90 (Hopper) down to cubin,
# with the exact argument specialization a real launch would use.
_SM90_PRELUDE = """
import sys
sys.path.insert(0, {shared!r})
import torch, triton
try:  # Triton internals: exit 77 (-> skip) where this version lays them out differently
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature
    JITFunction._pack_args
except (ImportError, AttributeError) as exc:
    print(exc)
    sys.exit(77)
from loraplex.kernels import triton_attention, triton_lora, triton_lora_kernels

TARGET = GPUTarget("cuda", 90, 32)
BACKEND = make_backend(TARGET)
LAUNCHES = []

class _Recorder:
    def __init__(self, fn):
        self.fn = fn
    def __getitem__(self, grid):
        return lambda *args, **kw: LAUNCHES.append((self.fn, args, kw))

for _mod in (triton_lora_kernels, triton_attention):
    for _name, _obj in list(vars(_mod).items()):
        if isinstance(_obj, JITFunction) and _name.endswith("_kernel"):
            setattr(_mod, _name, _Recorder(_obj))
"""

_SM90_POSTLUDE = """
assert LAUNCHES, "no kernel launch recorded"
seen = set()
for fn, args, kw in LAUNCHES:
    binder = create_function_from_signature(fn.signature, fn.params, BACKEND)
    bound, spec, opts = binder(*args, **kw)
    options, sig, constexprs, attrs = fn._pack_args(BACKEND, kw, bound, spec, opts)
    key = (fn.__name__, repr(sig), repr(constexprs), repr(attrs))
    if key in seen:  # same specialization, same binary
        continue
    seen.add(key)
    src = ASTSource(fn, sig, constexprs, attrs)
    compiled = triton.compile(src, target=TARGET, options=options.__dict__)
    assert "cubin" in compiled.asm, fn.__name__
print("compiled", len(seen), "specializations")
"""


@pytest.fixture
def sm90_compile(tmp_path_factory: pytest.TempPathFactory):
    """Callable: run ``body`` (calls to the public wrappers on CPU tensors) and compile every
    recorded launch for sm_90.  Skips when this Triton build cannot target CUDA."""

    cache_dir = tmp_path_factory.mktemp("triton_cache")  # cold compiles: timings stay honest

    def run(body: str) -> str:
        try:
            from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
        except Exception as exc:  # pragma: no cover - depends on the triton wheel
            pytest.skip(f"triton has no CUDA backend here: {exc}")
        shared = str(Path(__file__).resolve().parents[2] / "shared")
        script = _SM90_PRELUDE.format(shared=shared) + textwrap.dedent(body) + _SM90_POSTLUDE
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences a 3.9 warning; GPU default
        env["TRITON_CACHE_DIR"] = str(cache_dir)
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
        )
        if proc.returncode == 77:
            pytest.skip(f"this Triton version's compiler internals differ: {proc.stdout.strip()}")
        assert proc.returncode == 0, f"sm_90 compile failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
        return proc.stdout

    return run
