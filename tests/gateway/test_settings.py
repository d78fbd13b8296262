"""Settings and the command line: defaults from the model dir, loopback-only open mode, --help."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loraplex.gateway.__main__ import main
from loraplex.gateway.settings import GatewaySettings, is_loopback
from loraplex.model.config import MAX_MODEL_LEN_CAP, ModelConfig
from loraplex.tooling.demo import DemoModelInfo


def test_defaults_from_model_dir(demo: DemoModelInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAPLEX_MODEL_ID", raising=False)
    monkeypatch.delenv("LORAPLEX_MAX_MODEL_LEN", raising=False)
    s = GatewaySettings.from_env(model_dir=str(demo.model_dir))
    assert s.model_id == Path(demo.model_dir).name
    assert s.max_model_len == 2048  # the demo model's max_position_embeddings
    assert s.open_mode and s.host == "127.0.0.1" and s.max_body_bytes == 4 * 1024 * 1024
    assert s.gateway_id != GatewaySettings.from_env(model_dir=str(demo.model_dir)).gateway_id
    monkeypatch.setenv("LORAPLEX_GATEWAY_REQUEST_TIMEOUT_S", "7.5")
    assert (
        GatewaySettings.from_env(model_dir=str(demo.model_dir), model_id="m").request_timeout_s
        == 7.5
    )


def test_open_mode_is_loopback_only(
    demo: DemoModelInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(ValueError, match="loopback"):
        GatewaySettings.from_env(model_dir=str(demo.model_dir), host="0.0.0.0")
    tenants = tmp_path / "t.json"
    tenants.write_text('{"tenants": [{"name": "a", "api_key": "k"}]}')
    s = GatewaySettings.from_env(
        model_dir=str(demo.model_dir), host="0.0.0.0", tenants_file=str(tenants)
    )
    assert not s.open_mode
    assert main(["--model", str(demo.model_dir), "--host", "0.0.0.0"]) == 2
    assert "refusing to listen on '0.0.0.0' without --tenants" in capsys.readouterr().err


def test_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "loraplex.gateway", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for flag in (
        "--host",
        "--port",
        "--nats-url",
        "--redis-url",
        "--model",
        "--model-id",
        "--tenants",
        "--request-timeout",
    ):
        assert flag in out.stdout


def test_long_context_models_default_to_the_workers_cap(
    demo: DemoModelInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 32k-context model: the gateway's default limit is the workers' (8192), so a longer
    request is refused at the edge rather than failing at a worker."""
    monkeypatch.delenv("LORAPLEX_MAX_MODEL_LEN", raising=False)
    model = tmp_path / "long"
    shutil.copytree(demo.model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = 32768
    (model / "config.json").write_text(json.dumps(config))
    s = GatewaySettings.from_env(model_dir=str(model))
    assert s.max_model_len == MAX_MODEL_LEN_CAP == ModelConfig.from_dir(model).default_max_model_len
    assert (
        GatewaySettings.from_env(model_dir=str(model), max_model_len=16384).max_model_len == 16384
    )
