"""Tenants config: loading (JSON/YAML), validation messages, key lookup, open mode, no key leaks."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from loraplex.tenants import (
    AuthenticationError,
    Tenant,
    Tenants,
    TenantsConfigError,
    load_tenants,
    parse_tenants,
)

DOC = {
    "tenants": [
        {"name": "alice", "api_key": "sk-alice-secret", "weight": 1},
        {"name": "bob", "api_key": "sk-bob-secret", "weight": 2.5},
    ]
}


def test_load_json_and_yaml(tmp_path: Path) -> None:
    j = tmp_path / "tenants.json"
    j.write_text(json.dumps(DOC))
    y = tmp_path / "tenants.yaml"
    y.write_text(
        "tenants:\n"
        "  - {name: alice, api_key: sk-alice-secret, weight: 1}\n"
        "  - name: bob\n    api_key: sk-bob-secret\n    weight: 2.5\n"
    )
    for path in (j, y):
        t = load_tenants(path)
        assert not t.open_mode and t.names == ("alice", "bob")
        assert t.get("bob") == Tenant("bob", "sk-bob-secret", 2.5)
        assert isinstance(t.get("alice").weight, float)


def test_weight_defaults_to_one() -> None:
    t = parse_tenants({"tenants": [{"name": "a", "api_key": "k"}]})
    assert t.tenants[0].weight == 1.0


def test_open_mode() -> None:
    for t in (load_tenants(None), load_tenants(""), Tenants.open()):
        assert t.open_mode and t.names == ("default",)
        assert t.authenticate(None).name == "default"
        assert t.authenticate("Bearer anything").name == "default"


def test_lookup_by_key_and_bearer_header() -> None:
    t = parse_tenants(DOC)
    assert t.by_api_key("sk-bob-secret").name == "bob"
    assert t.by_api_key("sk-bob-secre") is None
    assert t.by_api_key("") is None and t.by_api_key(None) is None
    assert t.authenticate("Bearer sk-alice-secret").name == "alice"
    assert t.authenticate("bearer   sk-alice-secret ").name == "alice"
    for header, msg in [
        (None, "missing API key"),
        ("", "missing API key"),
        ("Basic abc", "malformed"),
        ("Bearer ", "malformed"),
        ("Bearer sk-wrong", "incorrect API key"),
    ]:
        with pytest.raises(AuthenticationError, match=msg) as e:
            t.authenticate(header)
        assert "sk-" not in str(e.value)


def test_a_tenant_may_hold_several_keys() -> None:
    doc = {
        "tenants": [
            {"name": "alice", "api_key": "sk-a1", "api_keys": ["sk-a2", "sk-a3"]},
            {"name": "bob", "api_keys": ["sk-b1"]},
        ]
    }
    t = parse_tenants(doc)
    for key in ("sk-a1", "sk-a2", "sk-a3"):
        assert t.authenticate(f"Bearer {key}").name == "alice"
    assert t.authenticate("Bearer sk-b1").name == "bob"
    assert t.get("alice").api_keys == ("sk-a1", "sk-a2", "sk-a3")  # type: ignore[union-attr]
    assert "sk-a" not in repr(t)
    with pytest.raises(AuthenticationError):
        t.authenticate("Bearer sk-a4")


def test_a_key_may_be_written_as_its_digest() -> None:
    digest = "sha256:" + hashlib.sha256(b"sk-secret-1").hexdigest()
    doc = {"tenants": [{"name": "a", "api_key": digest}, {"name": "b", "api_key": "sk-b"}]}
    t = parse_tenants(doc)
    assert t.authenticate("Bearer sk-secret-1").name == "a"
    assert t.authenticate("Bearer sk-b").name == "b"
    with pytest.raises(AuthenticationError):
        t.authenticate(f"Bearer {digest}")  # the digest itself is no key
    with pytest.raises(AuthenticationError):
        t.authenticate("Bearer sk-secret-2")
    # a key and its digest are one key: twice in a tenant, or in two tenants, is refused
    for dup in (
        {"tenants": [{"name": "a", "api_keys": ["sk-secret-1", digest]}]},
        {"tenants": [{"name": "a", "api_key": digest}, {"name": "b", "api_key": "sk-secret-1"}]},
    ):
        with pytest.raises(TenantsConfigError) as e:
            parse_tenants(dup)
        assert "sk-secret" not in str(e.value) and digest not in str(e.value)
    # not a digest (upper case, short): taken as a plain key
    odd = "sha256:" + "AB" * 32
    assert (
        parse_tenants({"tenants": [{"name": "c", "api_key": odd}]})
        .authenticate(f"Bearer {odd}")
        .name
        == "c"
    )


def test_hash_key_prints_the_digest(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import io

    from loraplex.tooling.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("sk-secret-1\n"))
    assert main(["hash-key"]) == 0
    printed = capsys.readouterr().out.strip()
    doc = {"tenants": [{"name": "a", "api_key": printed}]}
    assert parse_tenants(doc).authenticate("Bearer sk-secret-1").name == "a"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "expected an object with a 'tenants' list"),
        ({"tenant": []}, "expected an object with a 'tenants' list"),
        ({"tenants": []}, "non-empty list"),
        ({"tenants": ["alice"]}, r"tenants\[0\]: expected an object"),
        ({"tenants": [{"name": "a"}]}, r"tenants\[0\]: missing field\(s\) api_key"),
        ({"tenants": [{"api_key": "k"}]}, r"missing field\(s\) name"),
        ({"tenants": [{"name": "a", "api_key": "k", "wieght": 1}]}, "unknown field.*wieght"),
        ({"tenants": [{"name": "a b", "api_key": "k"}]}, "name 'a b' is invalid"),
        ({"tenants": [{"name": "a", "api_key": ""}]}, "tenant 'a': api_key must be a non-empty"),
        ({"tenants": [{"name": "a", "api_key": 5}]}, "api_key must be a non-empty string"),
        ({"tenants": [{"name": "a", "api_key": "k", "weight": 0}]}, "weight must be .*> 0"),
        ({"tenants": [{"name": "a", "api_key": "k", "weight": -1}]}, "weight must be .*> 0"),
        ({"tenants": [{"name": "a", "api_key": "k", "weight": "2"}]}, "weight must be a number"),
        ({"tenants": [{"name": "a", "api_key": "k", "weight": True}]}, "weight must be a number"),
        (
            {"tenants": [{"name": "a", "api_key": "k1"}, {"name": "a", "api_key": "k2"}]},
            "tenant 'a': duplicate tenant name",
        ),
        (
            {"tenants": [{"name": "a", "api_key": "sk-dup"}, {"name": "b", "api_key": "sk-dup"}]},
            "tenant 'b': api_key is already used by another tenant",
        ),
        (
            {
                "tenants": [
                    {"name": "a", "api_key": "k"},
                    {"name": "b", "api_keys": ["x", "sk-dup", "k"]},
                ]
            },
            "tenant 'b': api_key is already used by another tenant",
        ),
        ({"tenants": [{"name": "a", "api_keys": ["sk-dup", "sk-dup"]}]}, "same key twice"),
        ({"tenants": [{"name": "a", "api_key": "k", "api_keys": "sk-dup"}]}, "must be a list"),
        ({"tenants": [{"name": "a", "api_keys": []}]}, "at least one api_key"),
        ({"tenants": [{"name": "a", "api_key": "k", "max_queue": 0}]}, "max_queue must be"),
        ({"tenants": [{"name": "a", "api_key": "k", "max_queue": True}]}, "max_queue must be"),
        ({"tenants": [{"name": "a", "api_key": "k", "max_queue": "5"}]}, "max_queue must be"),
        ({"tenants": [{"name": "a", "api_keys": ["k", ""]}]}, "api_key must be a non-empty"),
    ],
)
def test_validation_errors(doc: object, message: str) -> None:
    with pytest.raises(TenantsConfigError, match=message) as e:
        parse_tenants(doc, source="t.json")
    assert str(e.value).startswith("t.json: ")
    assert "sk-dup" not in str(e.value)


def test_file_errors_do_not_leak_keys(tmp_path: Path) -> None:
    with pytest.raises(TenantsConfigError, match="cannot read tenants file"):
        load_tenants(tmp_path / "nope.json")
    bad_json = tmp_path / "t.json"
    bad_json.write_text('{"tenants": [{"name": "a", "api_key": "sk-leak"')
    with pytest.raises(TenantsConfigError, match="not valid JSON") as e:
        load_tenants(bad_json)
    assert "sk-leak" not in str(e.value)
    bad_yaml = tmp_path / "t.yaml"
    bad_yaml.write_text("tenants:\n  - name: a\n    api_key: sk-leak: [\n")
    with pytest.raises(TenantsConfigError, match="not valid YAML.*line") as e:
        load_tenants(bad_yaml)
    assert "sk-leak" not in str(e.value)


def test_api_keys_never_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    t = parse_tenants(DOC)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("tenants: %s %r", t, t.tenants[0])
    assert "secret" not in repr(t) and "secret" not in str(t.tenants)
    assert "secret" not in caplog.text
