"""``epic-fhir keys generate|jwks`` through the real argument parser, and ``epic-fhir token`` as a person runs
it (a subprocess against ``epic-fhir sandbox`` on 127.0.0.1)."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from epic_fhir_async.auth import generate_private_key, load_private_keys, private_key_pem
from epic_fhir_async.cli._main import main
from tests.cli.conftest import SERVED_CLIENT, ServedSandbox, Shell


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


def test_token_command_prints_expiry_and_scopes_but_not_the_token(
    served: ServedSandbox, shell: Shell
) -> None:
    argv = ["token", *served.auth]
    result = shell(*argv, "--scope", "system/Patient.read")
    assert result.status == 0, str(result)
    assert "expires in: 3600 s" in result.out
    assert "system/Patient.read" in result.out
    assert f"token URL: {served.token_url}" in result.out
    assert "access token" not in result.out
    assert not re.search(r"eyJ[\w-]{20,}", result.out)  # no JWT-shaped string
    shown = shell(*argv, "--show-token")
    assert shown.status == 0, str(shown)
    assert re.search(r"^access token: eyJ[\w-]+\.[\w-]+\.[\w-]+$", shown.out, re.MULTILINE), str(shown)


def test_token_command_reports_epic_errors_with_the_hint(served: ServedSandbox, shell: Shell) -> None:
    other = shell.cwd / "unregistered"
    assert shell("keys", "generate", "--alg", "ES384", "--out", other).status == 0
    result = shell("token", "--base-url", served.base_url, "--client-id", SERVED_CLIENT, "--key",
                   other / "private_key.pem")  # fmt: skip
    assert result.status == 1, str(result)
    assert result.err.startswith("epic-fhir token: token request to ")
    assert "invalid_client" in result.err
    assert "Hint:" in result.err
    assert (
        "token request refused: unknown_kid (the assertion's kid is not in the client's JWK Set" in served.log
    )
