"""``epic-fhir keys generate|jwks`` and ``epic-fhir token`` through the real argument parser."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest

from epic_fhir_async.auth import generate_private_key, load_private_keys, private_key_pem
from epic_fhir_async.cli import _token
from epic_fhir_async.cli._main import main
from tests.conftest import FakeEpic


@pytest.fixture
def fake() -> FakeEpic:
    """The fake Epic token server, with no key registered: each test registers the one it signs with, or none."""
    return FakeEpic(public_jwks={"keys": []})


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_keys_generate_writes_a_private_0600_key_and_public_jwks(
    alg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys"
    assert main(["keys", "generate", "--alg", alg, "--out", str(out)]) == 0
    private, jwks_file = out / "private_key.pem", out / "jwks.json"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    (key,) = load_private_keys(private)
    jwks = json.loads(jwks_file.read_text())
    (jwk,) = jwks["keys"]
    assert jwk["kid"] == key.kid
    assert jwk["alg"] == alg
    assert "d" not in jwk
    printed = capsys.readouterr().out
    assert key.kid in printed
    assert "JWK Set URL" in printed
    assert "PRIVATE" not in printed
    # Never overwrite a key by accident.
    assert main(["keys", "generate", "--out", str(out)]) == 1
    assert main(["keys", "generate", "--out", str(out), "--force"]) == 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_private_keys(private)[0].kid != key.kid


def test_keys_jwks_prints_public_keys_oldest_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = generate_private_key("RS384"), generate_private_key("ES384")
    paths = []
    for name, key in (("old.pem", old), ("new.pem", new)):
        path = tmp_path / name
        path.write_bytes(private_key_pem(key))
        path.chmod(0o600)
        paths.append(str(path))
    assert main(["keys", "jwks", *paths]) == 0
    jwks = json.loads(capsys.readouterr().out)
    assert [k["kid"] for k in jwks["keys"]] == [old.kid, new.kid]
    assert all("d" not in k for k in jwks["keys"])
    assert main(["keys", "jwks", str(tmp_path / "missing.pem")]) == 1


def _use_fake(monkeypatch: pytest.MonkeyPatch, fake: FakeEpic) -> None:
    monkeypatch.setattr(
        _token, "_http_client", lambda: httpx.AsyncClient(transport=httpx.MockTransport(fake.handler))
    )


def test_token_command_prints_expiry_and_scopes_but_not_the_token(
    fake: FakeEpic, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = generate_private_key("RS384")
    assert fake.public_jwks is not None
    fake.public_jwks["keys"].append(key.public_jwk())
    path = tmp_path / "key.pem"
    path.write_bytes(private_key_pem(key))
    path.chmod(0o600)
    _use_fake(monkeypatch, fake)
    argv = ["token", "--base-url", fake.base, "--client-id", fake.client_id, "--key", str(path)]
    assert main([*argv, "--scope", "system/Patient.read"]) == 0
    out = capsys.readouterr().out
    assert "expires in: 3600 s" in out
    assert "system/Patient.read" in out
    assert fake.token_url in out
    assert fake.issued[0] not in out
    assert main([*argv, "--show-token"]) == 0
    assert fake.issued[1] in capsys.readouterr().out


def test_token_command_reports_epic_errors_with_the_hint(
    fake: FakeEpic, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "unregistered.pem"
    path.write_bytes(private_key_pem(generate_private_key("RS384")))
    path.chmod(0o600)
    _use_fake(monkeypatch, fake)
    code = main(["token", "--base-url", fake.base, "--client-id", fake.client_id, "--key", str(path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "invalid_client" in err
    assert "Hint:" in err
