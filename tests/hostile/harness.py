"""A real ``loraplex up`` stack with two tenants, for hostile-input tests and bench/reliability.py.

``HostileStack.start`` runs the launcher's own ``start_stack`` (nats-server, redis-server, adapter
store, scheduler, one prefill and one decode worker, gateway; the supervisor on) with a tenants file
of two tenants and a server-side adapters root.  ``assert_healthy`` is the check after every case:
a normal request from a tenant completes, and no process of the stack exited or was restarted since
``mark``.  After a case that did break something, ``recover`` waits for the supervisor to heal the
stack (or says it cannot), so one crash does not fail every later case.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

from loraplex.tooling.launcher import Stack, start_stack
from loraplex.tooling.ports import free_port
from loraplex.tooling.up_flags import parse_up_args

ALPHA, BETA = "tenant-alpha", "tenant-beta"  # the demo adapters (public) belong to ALPHA
KEYS = {ALPHA: "sk-hostile-alpha-5c0e19d2", BETA: "sk-hostile-beta-a81f44b7"}
STACK_FLAGS = (
    "--dtype", "float32", "--device", "cpu", "--max-num-seqs", "16", "--num-kv-blocks", "512",
    "--prefill-workers", "1", "--decode-workers", "1",
)  # fmt: skip
UPLOADS_PER_TENANT = 2  # LORAPLEX_UPLOADS_PER_TENANT of the stack: concurrent uploads, then 429
HTTP_TIMEOUT_S = 60.0
RECOVER_TIMEOUT_S = 120.0


def other(tenant: str) -> str:
    return BETA if tenant == ALPHA else ALPHA


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set variables for the children the launcher (and its supervisor) spawn meanwhile."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class StackBroken(AssertionError):
    """A process of the stack exited or was restarted, or a normal request failed."""


@dataclass
class HostileStack:
    stack: Stack
    base: str
    model_id: str
    adapters_root: Path
    demo_adapters: list[str]
    env: ExitStack
    baseline: dict[str, int] = field(default_factory=dict)  # service -> pid at ``mark``

    @classmethod
    def start(
        cls, run_dir: Path, extra_flags: Sequence[str] = (), extra_env: dict[str, str] | None = None
    ) -> HostileStack:
        """Start the stack.  Its environment (the adapters root, ``extra_env``) stays set until
        ``stop``, so a service the supervisor restarts gets the same settings."""
        run_dir.mkdir(parents=True, exist_ok=True)
        adapters_root = run_dir / "adapters-root"
        adapters_root.mkdir(exist_ok=True)
        env = ExitStack()
        env.enter_context(
            environ(
                {
                    "LORAPLEX_ADAPTERS_ROOT": str(adapters_root),
                    "LORAPLEX_UPLOADS_PER_TENANT": str(UPLOADS_PER_TENANT),
                    **(extra_env or {}),
                }
            )
        )
        tenants = run_dir / "tenants.json"
        tenants.write_text(
            json.dumps({"tenants": [{"name": n, "api_key": k} for n, k in KEYS.items()]})
        )
        stack = Stack(run_dir / "stack")
        argv = ["--port", str(free_port()), "--run-dir", str(stack.run_dir)]
        argv += [*STACK_FLAGS, "--tenants", str(tenants), *extra_flags]
        try:
            base, model, adapters = start_stack(parse_up_args(argv), stack)
        except BaseException:
            stack.stop()
            env.close()
            raise
        model_id = os.path.basename(os.path.normpath(model))
        hs = cls(stack, base, model_id, adapters_root, [a.name for a in adapters], env)
        hs.mark()
        return hs

    # ---- clients -------------------------------------------------------------------------
    def http(self, tenant: str | None = None, timeout: float = HTTP_TIMEOUT_S) -> httpx.Client:
        """A fresh client (no keep-alive shared between cases), with ``tenant``'s key if given."""
        headers = auth(tenant) if tenant else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def openai(self, tenant: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base + "/v1", api_key=KEYS[tenant], max_retries=0, timeout=HTTP_TIMEOUT_S
        )

    def async_openai(self, tenant: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base + "/v1", api_key=KEYS[tenant], max_retries=0, timeout=HTTP_TIMEOUT_S
        )

    # ---- health --------------------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.stack.procs}

    def mark(self) -> None:
        """The processes now running are the ones ``assert_healthy`` expects to find."""
        self.baseline = self.pids()

    def broken_processes(self) -> list[str]:
        """Services that exited, or whose process is not the one seen at ``mark``, and servers
        (nats, redis) that exited; each with the tail of its log."""
        out = []
        for name, proc in self.stack.procs:
            if proc.poll() is not None:
                out.append(f"{name} exited with code {proc.returncode}")
            elif self.baseline.get(name) != proc.pid:
                out.append(f"{name} was restarted (pid {self.baseline.get(name)} -> {proc.pid})")
        out += [f"{s.name} exited" for s in self.stack.servers if s.proc.poll() is not None]
        return out

    def log_tail(self, name: str, chars: int = 1500) -> str:
        try:
            return (self.stack.run_dir / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def normal_request(self, tenant: str) -> str:
        """One ordinary completion on a public demo adapter (LoRA path) as ``tenant``."""
        out = self.openai(tenant).completions.create(
            model=self.demo_adapters[0], prompt="Hello there", max_tokens=4, temperature=0
        )
        choice = out.choices[0]
        assert choice.finish_reason in ("stop", "length"), out
        return choice.text

    def assert_healthy(self, tenant: str) -> None:
        """``tenant`` is served, and no process of the stack exited or restarted since ``mark``."""
        try:
            self.normal_request(tenant)
            failure = None
        except openai.APIError as e:
            failure = f"a normal request from {tenant} failed: {e!r}"
        broken = self.broken_processes()
        if broken or failure:
            tails = "\n".join(
                f"--- {b.split()[0]}.log:\n{self.log_tail(b.split()[0])}" for b in broken
            )
            raise StackBroken("; ".join([*broken, *([failure] if failure else [])]) + "\n" + tails)

    def recover(self, timeout: float | None = None) -> bool:
        """After a broken case: wait until every process runs (the supervisor restarts what
        exited) and both tenants are served, then ``mark``.  False if that does not happen."""
        deadline = time.monotonic() + (RECOVER_TIMEOUT_S if timeout is None else timeout)
        while time.monotonic() < deadline:
            alive = all(p.poll() is None for _, p in self.stack.procs)
            if alive and all(s.proc.poll() is None for s in self.stack.servers):
                try:
                    for tenant in KEYS:
                        self.normal_request(tenant)
                    self.mark()
                    return True
                except (openai.APIError, AssertionError):
                    pass
            time.sleep(0.5)
        return False

    def __repr__(self) -> str:
        return f"HostileStack({self.base}, pids={self.baseline})"

    def stop(self) -> None:
        try:
            self.stack.stop()
        finally:
            self.env.close()


def assert_openai_error(r: httpx.Response, statuses: Sequence[int]) -> dict:
    """``r`` has one of ``statuses`` and, if it is an error, an OpenAI error body."""
    assert r.status_code in statuses, (
        f"expected {list(statuses)}, got {r.status_code}: {r.text[:600]}"
    )
    if r.status_code < 400:
        return {}
    body = r.json()
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict), f"not an OpenAI error body: {r.text[:600]}"
    assert isinstance(err.get("message"), str) and err["message"], r.text[:600]
    assert isinstance(err.get("type"), str) and err["type"], r.text[:600]
    return err
