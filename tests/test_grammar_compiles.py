"""``GrammarCompiles``: a worker's output-constraint compiles are shared by identical constraints,
bounded in time (a 400 when the compile itself runs over, a retryable 503 when it only waited for
a thread) and in threads.  The compile function here blocks until the test releases it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from loraplex.errors import InvalidRequestError
from loraplex.structured_outputs import StructuredOutputsParams as SO
from loraplex.worker.grammar_compiles import CompileBusy, CompileTooCostly, GrammarCompiles


class _Compiler:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()

    def __call__(self, so: SO) -> None:
        self.calls.append(so.spec)
        if so.spec == "bad":
            raise InvalidRequestError("invalid regex for structured output: bad")
        if so.spec.startswith("slow"):
            self.release.wait(30)


def test_identical_constraints_share_one_compile() -> None:
    compiler = _Compiler()

    async def run() -> None:
        compiles = GrammarCompiles(compiler, timeout_s=30)
        task = asyncio.gather(*(compiles.compile(SO(regex="slow")) for _ in range(3)))
        await asyncio.sleep(0.2)
        compiler.release.set()
        await task
        await compiles.compile(SO(regex="[ab]+"))

    asyncio.run(run())
    assert compiler.calls == ["slow", "[ab]+"]


def test_a_compile_over_the_limit_is_a_400_and_one_waiting_for_a_thread_a_503() -> None:
    compiler = _Compiler()

    async def run() -> tuple[BaseException, BaseException]:
        compiles = GrammarCompiles(compiler, timeout_s=0.3, threads=1)
        got = await asyncio.gather(
            compiles.compile(SO(regex="slow-1")),  # has the thread, runs over
            compiles.compile(SO(regex="slow-2")),  # waits for the thread past its limit
            return_exceptions=True,
        )
        compiler.release.set()
        await asyncio.sleep(0.2)  # the first finishes in its thread; the second never started
        return got[0], got[1]

    over, busy = asyncio.run(run())
    assert isinstance(over, CompileTooCostly) and "too costly to compile" in str(over)
    assert isinstance(busy, CompileBusy)
    assert compiler.calls == ["slow-1"]  # the one nobody waited for any more was dropped


def test_a_constraint_that_does_not_compile_says_why() -> None:
    async def run() -> None:
        await GrammarCompiles(_Compiler(), timeout_s=5).compile(SO(regex="bad"))

    with pytest.raises(InvalidRequestError, match="invalid regex"):
        asyncio.run(run())


def test_the_compilers_set_up_is_not_counted_against_a_constraint() -> None:
    """The first compile builds xgrammar's compiler (importing transformers, reading the
    tokenizer: seconds on a busy machine): outside the time limit, once."""
    compiler, setups = _Compiler(), []

    def setup() -> None:
        setups.append(1)
        compiler.release.wait(30)

    async def run() -> None:
        compiles = GrammarCompiles(compiler, timeout_s=0.3, setup_fn=setup)
        first = asyncio.gather(compiles.compile(SO(regex="a+")), compiles.compile(SO(regex="b+")))
        await asyncio.sleep(0.6)  # longer than the limit
        compiler.release.set()
        await first
        await compiles.compile(SO(regex="c+"))

    asyncio.run(run())
    assert setups == [1] and sorted(compiler.calls) == ["a+", "b+", "c+"]
