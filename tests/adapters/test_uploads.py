"""Uploads to the adapter-store on a real uvicorn server over a real redis-server: a folder as
PEFT's ``save_pretrained`` writes it uploads unchanged (multipart and by path); an upload's
Python memory is a few chunks, not the file (tracemalloc), and validating it does not keep the
file resident (peak RSS); spool files live under
``--upload-dir`` and are deleted; a tenant's concurrent uploads are limited (429, body unread);
NUL bytes and lone surrogates in any field are 400s."""

from __future__ import annotations

import asyncio
import json
import shutil
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch

from loraplex.adapters.store import AdapterStore
from loraplex.lora.adapter_check import check_adapter_file
from loraplex.model.config import ModelConfig
from loraplex.tooling.demo import ALL_MODULES, TinyModelSpec, model_config, write_random_adapter

from .conftest import ALICE, BOB, keys_with
from .paging_helpers import until
from .test_service import CFG, WTS, assert_error

MiB = 1024 * 1024


def folder_files(folder: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Every file of ``folder`` as multipart ``files`` parts, as a browser would send them."""
    return [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in sorted(folder.iterdir())]  # fmt: skip


def save_pretrained_folder(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter of a tiny random Llama (the fixture's base config) written by real PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = get_peft_model(base, lora)
    with torch.no_grad():  # B starts at 0: give it trained-looking values
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.01)
    model.save_pretrained(out)
    return out


async def test_a_save_pretrained_folder_uploads_as_it_is(
    service, model_dir: Path, adapters_root: Path, tmp_path: Path
) -> None:
    folder = save_pretrained_folder(model_dir, adapters_root / "peft")
    assert {p.name for p in folder.iterdir()} == {"README.md", CFG, WTS}
    pickled = shutil.copytree(folder, adapters_root / "pickled")
    (pickled / "training_args.bin").write_bytes(b"\x80\x04 a pickle")
    unknown = shutil.copytree(folder, adapters_root / "unknown")
    (unknown / "adapter_model.gguf").write_bytes(b"GGUF")
    async with service() as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/v1/adapters", data={"name": "mp"}, files=folder_files(folder), headers=ALICE)  # fmt: skip
        assert r.status_code == 201, r.text
        assert (r.json()["rank"], r.json()["alpha"], r.json()["targets"]) == (4, 8.0, ["q_proj", "v_proj"])  # fmt: skip
        r = await http.post("/v1/adapters", json={"name": "bypath", "path": "peft"}, headers=ALICE)
        assert r.status_code == 201, r.text
        for bad, message in ((pickled, "file 'training_args.bin' is a pickle"), (unknown, "unexpected file 'adapter_model.gguf'")):  # fmt: skip
            r = await http.post("/v1/adapters", data={"name": "x"}, files=folder_files(bad), headers=ALICE)  # fmt: skip
            assert_error(r, 400, message, "files")
            r = await http.post("/v1/adapters", json={"name": "x", "path": bad.name}, headers=ALICE)
            assert_error(r, 400, message)


@pytest.fixture
def big_model(tmp_path: Path) -> tuple[Path, Path]:
    """A base config (no weights: the store needs none) and a ~64 MiB rank-64 adapter for it."""
    spec = TinyModelSpec(
        hidden_size=1024, intermediate_size=4096, num_layers=11, num_heads=8, num_kv_heads=8
    )
    model = tmp_path / "big-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(model_config(spec)))
    adapter = tmp_path / "adapters-root" / "big"
    write_random_adapter(adapter, spec, rank=64, alpha=128, targets=ALL_MODULES, seed=3)
    assert (adapter / WTS).stat().st_size > 60 * MiB
    return model, adapter


async def test_upload_memory_is_a_few_chunks_not_the_file(
    service, big_model: tuple[Path, Path], store: AdapterStore, tmp_path: Path
) -> None:
    model, adapter = big_model
    spool = tmp_path / "spool"
    spool.mkdir()
    settings = {"model_dir": str(model), "max_lora_rank": 64, "max_adapter_mb": 128.0}
    async with (
        service(**settings, upload_dir=str(spool)) as url,
        httpx.AsyncClient(base_url=url, timeout=120) as http,
    ):
        peaks = {}
        tracemalloc.start()
        try:
            for how in ("multipart", "path"):
                with open(adapter / CFG, "rb") as cfg, open(adapter / WTS, "rb") as wts:
                    if how == "multipart":  # httpx streams file objects in 64 KiB pieces
                        kwargs = {"data": {"name": how}, "files": [("files", (CFG, cfg)), ("files", (WTS, wts))]}  # fmt: skip
                    else:
                        kwargs = {"json": {"name": how, "path": "big"}}
                    tracemalloc.reset_peak()
                    before = tracemalloc.get_traced_memory()[0]
                    r = await http.post("/v1/adapters", headers=ALICE, **kwargs)
                    peaks[how] = tracemalloc.get_traced_memory()[1] - before
                assert r.status_code == 201, r.text
                assert r.json()["size_bytes"] == (adapter / WTS).stat().st_size
        finally:
            tracemalloc.stop()
        assert all(peak < 16 * MiB for peak in peaks.values()), peaks
        assert list(spool.iterdir()) == []  # spools deleted
    got = await store.fetch("alice/multipart")
    assert got.weights_bytes == (adapter / WTS).read_bytes()


def _status_mib(field: str) -> int:
    return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith(field))  # fmt: skip


def test_validation_rss_is_a_pair_not_the_file(big_model: tuple[Path, Path]) -> None:
    """Checking a 64 MiB file raises the peak RSS (VmHWM, reset through clear_refs) by about one
    A/B pair: tensors are not read through one mapping of the whole file that stays resident."""
    model_dir, adapter = big_model
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    model = ModelConfig.from_dir(model_dir)
    config = (adapter / CFG).read_bytes()
    check_adapter_file("warm", config, adapter / WTS, model, 64)  # first-use allocations
    clear_refs.write_text("5")  # VmHWM := VmRSS
    before = _status_mib("VmRSS")
    summary = check_adapter_file("big", config, adapter / WTS, model, 64)
    assert summary.rank == 64 and len(summary.targets) == 7
    assert _status_mib("VmHWM") - before < 32  # the whole file would be 64+


def _multipart(boundary: str, name: str, adapter: Path, readme: int) -> tuple[bytes, bytes]:
    """A form upload of ``adapter`` plus a README.md of ``readme`` bytes, cut in two: the head
    (everything but the last 64 KiB of the README) and the rest."""
    parts = [(None, "name", name.encode())]
    parts += [(f, "files", (adapter / f).read_bytes()) for f in (CFG, WTS)]
    parts.append(("README.md", "files", b"#" * readme))
    body = b""
    for filename, field, data in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")  # fmt: skip
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"  # fmt: skip
    body += f"--{boundary}--\r\n".encode()
    cut = len(body) - 64 * 1024
    return body[:cut], body[cut:]


async def _held_upload(
    http: httpx.AsyncClient, name: str, adapter: Path, release: asyncio.Event
) -> httpx.Response:
    """An upload whose body stops before its end until ``release`` is set."""
    head, rest = _multipart("held", name, adapter, readme=2 * MiB)

    async def body() -> AsyncIterator[bytes]:
        yield head
        await release.wait()
        yield rest

    ctype = {"content-type": "multipart/form-data; boundary=held"}
    return await http.post("/v1/adapters", content=body(), headers={**ALICE, **ctype})


async def _refused_before_the_body(url: str) -> tuple[int, dict]:
    """Status and body of an upload that declares 10 MiB and sends 1 KiB of it: only an answer
    given without reading the body can come back."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/adapters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-alice-secret\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10485760\r\n\r\n"
            + b"x"
            * 1024
        )
        await writer.drain()
        # bounded: a server that waits for the rest of the body would never answer
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).decode()
        length = int(next(h.split(":")[1] for h in head.split("\r\n") if h.lower().startswith("content-length")))  # fmt: skip
        return int(head.split()[1]), json.loads(await reader.readexactly(length))
    finally:
        writer.close()


async def test_concurrent_uploads_per_tenant_are_limited(
    service, make_adapter, tmp_path: Path
) -> None:
    adapter = make_adapter("c")
    spool = tmp_path / "spool"
    spool.mkdir()
    release = asyncio.Event()
    async with (
        service(max_adapter_mb=4.0, upload_dir=str(spool)) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
    ):
        held = [asyncio.create_task(_held_upload(http, f"held-{i}", adapter, release)) for i in range(2)]  # fmt: skip
        # each held upload has spooled its weights: both are past the limiter, in the handler
        await until(lambda: len(list(spool.iterdir())) == 2, what="two uploads in progress")
        status, body = await _refused_before_the_body(url)
        assert status == 429, body
        assert body["error"]["type"] == "rate_limit_error"
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert "2 adapter uploads in progress" in body["error"]["message"]
        files = [("files", (f, (adapter / f).read_bytes())) for f in (CFG, WTS)]
        r = await http.post("/v1/adapters", data={"name": "bobs"}, files=files, headers=BOB)
        assert r.status_code == 201, r.text  # the limit is per tenant
        release.set()
        assert [(await t).status_code for t in held] == [201, 201]
        r = await http.post("/v1/adapters", data={"name": "after"}, files=files, headers=ALICE)
        assert r.status_code == 201, r.text  # slots are given back
    assert list(spool.iterdir()) == []


async def test_nul_bytes_and_lone_surrogates_are_400s(
    service, make_adapter, adapters_root: Path, store: AdapterStore
) -> None:
    make_adapter("p", under=adapters_root)
    good = {"name": "ok", "path": "p"}
    bodies = [
        ({**good, "name": "a\x00b"}, "name"),
        ({**good, "name": "a\ud800b"}, "name"),
        ({**good, "path": "p\x00/../p"}, "path"),
        ({**good, "path": "p\ud800"}, "path"),
        ({**good, "visibility": "pub\x00lic"}, "visibility"),
        ({**good, "replace": "tr\ud800ue"}, "replace"),
        ({**good, "\ud800": 1}, "field names"),
    ]
    json_type = {**ALICE, "content-type": "application/json"}
    async with service() as url, httpx.AsyncClient(base_url=url) as http:
        for body, param in bodies:  # json.dumps escapes them: \\u0000, \\ud800
            r = await http.post("/v1/adapters", content=json.dumps(body), headers=json_type)
            assert_error(r, 400, "must be text without NUL bytes or lone surrogates", param)
        r = await http.post("/v1/adapters", json={**good, "path": "p" * 5000}, headers=ALICE)
        assert_error(r, 400, "path is longer than 4096 characters", "path")
        files = [("files", (f, (adapters_root / "p" / f).read_bytes())) for f in (CFG, WTS)]
        for data in ({"name": "a\x00b"}, {"name": "ok", "visibility": "\x00"}):
            r = await http.post("/v1/adapters", data=data, files=files, headers=ALICE)
            assert r.status_code == 400, r.text
        nul_file = [files[0], ("files", (f"{WTS}\x00.txt", files[1][1][1]))]
        r = await http.post("/v1/adapters", data={"name": "ok"}, files=nul_file, headers=ALICE)
        assert_error(r, 400, "unexpected file")
        for path in ("/v1/adapters/a%00b", "/v1/adapters/%ED%A0%80"):
            for method in ("GET", "DELETE"):
                r = await http.request(method, path, headers=ALICE)
                assert r.status_code in (400, 404), (method, path, r.text)
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = await http.post("/v1/adapters", json=good, headers=ALICE)
        assert r.status_code == 201, r.text  # and still serving
    assert not [k for k in await keys_with(store) if "/a" in k]
