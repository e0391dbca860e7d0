"""SECURITY.md promises 2-5: TLS only (loopback excepted), verification on, one-time ``jti``, key file modes."""

from __future__ import annotations

import os
import pathlib
import ssl
import uuid
from typing import Any

import httpx
import jwt as pyjwt
import pytest

import epic_fhir_async
from epic_fhir_async import BackendServicesAuth, ConfigurationError, EpicFHIRClient, StaticTokenAuth
from epic_fhir_async.auth import (
    InsecureKeyFileWarning,
    build_client_assertion,
    generate_private_key,
    load_private_keys,
    private_key_pem,
    public_jwks,
)

from ..conftest import fast_sdk_retries

pytestmark = pytest.mark.anyio

PACKAGE = pathlib.Path(epic_fhir_async.__file__).parent


@pytest.mark.parametrize(
    "base_url",
    [
        "http://fhir.example.org/R4",
        "http://10.0.0.5/R4",
        "http://127.0.0.1.evil.example/R4",
        "http://[::ffff:a00:5]/R4",
    ],
)
def test_plain_http_is_refused_except_on_loopback(base_url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"refusing plain http://.*TLS.*loopback.*http_client"):
        EpicFHIRClient(base_url)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8765/R4",
        "http://localhost/R4",
        "http://[::1]:8080/R4",
        "https://fhir.example.org/R4",
    ],
)
async def test_loopback_and_https_are_accepted(base_url: str) -> None:
    async with EpicFHIRClient(base_url) as client:
        assert client.base_url.scheme in ("http", "https")


async def test_a_callers_own_client_may_use_plain_http() -> None:
    async with (
        httpx.AsyncClient() as http,
        EpicFHIRClient("http://fhir.internal/R4", http_client=http, retry=False) as client,
    ):
        assert client.http is http


@pytest.mark.parametrize("token_url", ["http://fhir.example.org/oauth2/token", "http://192.168.1.1/token"])
def test_a_plain_http_token_url_is_refused_except_on_loopback(token_url: str) -> None:
    key = generate_private_key("ES256")
    with pytest.raises(ConfigurationError, match="refusing plain http://"):
        BackendServicesAuth("app", key, token_url=token_url)
    BackendServicesAuth("app", key, token_url="http://127.0.0.1:8765/oauth2/token")


async def test_tls_certificates_and_host_names_are_verified() -> None:
    async with EpicFHIRClient("https://fhir.example.org/R4") as client:
        inner: Any = client.http._transport.next_transport  # type: ignore[attr-defined]
        context: ssl.SSLContext = inner._pool._ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_the_library_never_turns_verification_off() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in PACKAGE.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(bad in line.replace(" ", "") for bad in ("verify=False", "CERT_NONE", "check_hostname=False"))
    ]
    assert offenders == []


def test_jti_never_repeats() -> None:
    key = generate_private_key("ES256")
    claims = [
        pyjwt.decode(
            build_client_assertion(key, client_id="app", audience="https://x/token"),
            options={"verify_signature": False},
        )
        for _ in range(500)
    ]
    jtis = [c["jti"] for c in claims]
    assert len(set(jtis)) == len(jtis)
    assert all(
        uuid.UUID(j).version == 4 for j in jtis
    )  # random, not a counter that restarts with the process


async def test_jti_never_repeats_across_token_requests_and_retries() -> None:
    forms: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            forms.append(request.content.decode())
            if len(forms) % 2:  # every other request: Epic's bare-400 flake, retried with a new assertion
                return httpx.Response(400, json={"error": "invalid_client", "error_description": None})
            return httpx.Response(200, json={"access_token": f"t{len(forms)}", "expires_in": 3600})
        return httpx.Response(200, json={"resourceType": "Patient", "id": "p"})

    key = generate_private_key("ES256")
    with pytest.MonkeyPatch.context() as patch:
        fast_sdk_retries(patch, 0.0)
        auth = BackendServicesAuth("app", key, token_url="https://fhir.example.org/oauth2/token")
        async with EpicFHIRClient(
            "https://fhir.example.org/R4", auth=auth, transport=httpx.MockTransport(handler)
        ) as client:
            for _ in range(5):
                auth.invalidate()
                await client.read("Patient", "p")
    assertions = [f.split("client_assertion=")[1].split("&")[0] for f in forms]
    jtis = [pyjwt.decode(a, options={"verify_signature": False})["jti"] for a in assertions]
    assert len(jtis) == 10
    assert len(set(jtis)) == 10


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_can_read_gets_a_warning(tmp_path: pathlib.Path, mode: int) -> None:
    key = generate_private_key("ES256")
    for name, data in (("key.pem", private_key_pem(key)), ("key.json", _jwk_json(key))):
        path = tmp_path / name
        path.write_bytes(data)
        path.chmod(mode)
        with pytest.warns(InsecureKeyFileWarning, match=f"mode {mode:03o}.*chmod 600"):
            load_private_keys(path)
        path.chmod(0o600)
        load_private_keys(path)  # quiet (warnings are errors in this suite)


def _jwk_json(key: Any) -> bytes:
    import json

    return json.dumps(key.jwk.as_dict(private=True, kid=key.kid)).encode()


@pytest.mark.parametrize("token", ["abc\r\nX-Evil: 1", "tok\x00en", "tökén", "Bearer abc"])
def test_a_token_that_would_break_the_header_is_refused(token: str) -> None:
    with pytest.raises(ConfigurationError, match="token"):
        StaticTokenAuth(token)


def test_published_jwks_hold_no_private_member() -> None:
    for alg in ("RS384", "ES384"):
        for jwk in public_jwks(generate_private_key(alg))["keys"]:
            assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
