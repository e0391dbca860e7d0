"""Fixtures for the sandbox OAuth tests: keys generated at test time, assertions signed with joserfc."""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from epic_fhir_async.sandbox._clock import SandboxClock
from epic_fhir_async.sandbox._http import Request
from epic_fhir_async.sandbox._oauth import OAuthServer

TOKEN_URL = "http://127.0.0.1:8765/interconnect-fhir-oauth/oauth2/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
NOW = 1_750_000_000.0


@pytest.fixture(scope="session")
def rsa_key() -> RSAKey:
    key: RSAKey = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    return key


@pytest.fixture(scope="session")
def ec_key() -> ECKey:
    key: ECKey = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
    return key


def public_jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


@pytest.fixture
def clock() -> SandboxClock:
    return SandboxClock(frozen_at=NOW)


@pytest.fixture
def server(clock: SandboxClock, rsa_key: RSAKey, ec_key: ECKey) -> OAuthServer:
    srv = OAuthServer(token_url=TOKEN_URL, clock=clock, stats=collections.Counter(), token_lifetime=3600.0)
    srv.register_client("client-a", public_jwks(rsa_key, ec_key))
    return srv


def claims(client_id: str = "client-a", now: float = NOW, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "jti": str(uuid.uuid4()),
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 240,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: RSAKey | ECKey, payload: dict[str, Any], alg: str = "RS384", **header: Any) -> str:
    hdr: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if key.kid is not None:
        hdr["kid"] = key.kid
    hdr.update(header)
    hdr = {k: v for k, v in hdr.items() if v is not None}
    return jwt.encode(hdr, payload, key, algorithms=[alg])


def form_request(fields: dict[str, str], *, query: str = "") -> Request:
    return Request(
        method="POST",
        path="/interconnect-fhir-oauth/oauth2/token",
        headers={"content-type": "application/x-www-form-urlencoded"},
        body=urlencode(fields).encode(),
        raw_query=query,
    )


def token_form(assertion: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **extra,
    }


PostAssertion = Callable[[str], Any]
