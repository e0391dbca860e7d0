"""Fixtures for the sandbox's SMART App Launch tests: raw httpx on the in-process transport, never the SDK."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from epic_fhir_async.sandbox import EpicSandbox, SandboxClock

NOW = 1_780_000_000.0
CAMILA = "erXuFYUfucBZaryVksYEcMg3"
DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
DERRICK_ENCOUNTER = "e6kBx6PwnxIv.5kCifScsWg3"
REDIRECT = "https://app.example.org/smart/callback"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
STANDALONE_SCOPE = "launch/patient patient/Patient.read patient/Observation.read"
EHR_SCOPE = "launch patient/Patient.read"


@pytest.fixture
def sb() -> EpicSandbox:
    return EpicSandbox(seed=0, patients=3, clock=SandboxClock(frozen_at=NOW))


@pytest.fixture
async def http(sb: EpicSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=sb.transport()) as client:
        yield client


@pytest.fixture(scope="session")
def app_key() -> RSAKey:
    key: RSAKey = RSAKey.generate_key(2048, parameters={"kid": "smart-app-1"})
    return key


def pkce() -> tuple[str, str]:
    """A fresh ``(code_verifier, S256 code_challenge)`` pair."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_params(
    sb: EpicSandbox, client_id: str, challenge: str | None, *, scope: str = STANDALONE_SCOPE, **extra: str
) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": secrets.token_urlsafe(16),
        "aud": sb.base_url,
    }
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    params.update(extra)
    return {k: v for k, v in params.items() if v != ""}


def redirect_query(response: httpx.Response) -> dict[str, str]:
    """The query parameters of a 302 back to the app (asserting it goes to the registered URI)."""
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return dict(parse_qsl(urlsplit(location).query))


def error_code(response: httpx.Response) -> str:
    """The short reason on the sandbox's authorize error page."""
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "Something went wrong trying to authorize the client" in response.text
    return response.text.split('id="error-code">', 1)[1].split("<", 1)[0]


async def get_code(http: httpx.AsyncClient, sb: EpicSandbox, params: dict[str, str]) -> str:
    query = redirect_query(await http.get(sb.authorize_url, params=params))
    assert query["state"] == params["state"]
    return query["code"]


async def code_for(
    http: httpx.AsyncClient, sb: EpicSandbox, client_id: str, **params: str
) -> tuple[str, str]:
    """Authorize ``client_id`` with a fresh PKCE pair (``params`` override the defaults): ``(code, verifier)``."""
    verifier, challenge = pkce()
    return await get_code(http, sb, authorize_params(sb, client_id, challenge, **params)), verifier


def code_form(code: str, verifier: str | None, **extra: str) -> dict[str, str]:
    """An ``authorization_code`` token request body (``verifier`` None: no ``code_verifier``)."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    if verifier is not None:
        form["code_verifier"] = verifier
    return form | extra


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def assertion(sb: EpicSandbox, key: RSAKey, client_id: str) -> dict[str, str]:
    now = int(sb.clock.now())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": sb.token_url,
        "jti": str(uuid.uuid4()),
        "exp": now + 240,
    }
    token = jwt.encode({"alg": "RS384", "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=["RS384"])
    return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": token}


async def token(
    http: httpx.AsyncClient, sb: EpicSandbox, form: dict[str, str], *, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await http.post(sb.token_url, data=form, headers=headers or {})


async def read_patient(
    http: httpx.AsyncClient, sb: EpicSandbox, access_token: str, patient: str
) -> httpx.Response:
    return await http.get(
        f"{sb.base_url}/Patient/{patient}",
        headers={"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"},
    )


def json_body(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert isinstance(body, dict)
    return body
