"""A tiny Epic-like server on httpx.MockTransport for the auth tests (the full emulator is tested separately).

The token endpoint verifies client assertions with PyJWT, an implementation independent of the joserfc code
path the SDK signs with, applying Epic's rules (epic-behaviour.md §1.4).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import anyio
import httpx
import jwt as pyjwt
import pytest

from epic_fhir_async import _json
from epic_fhir_async.auth import EpicAuth, SigningKey, _request, generate_private_key, public_jwks

BASE = "https://fhir.example.org/interconnect-fhir-oauth/api/FHIR/R4"
TOKEN_URL = "https://fhir.example.org/interconnect-fhir-oauth/oauth2/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, content=_json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})}
    )


@dataclass
class FakeEpic:
    """Counts and checks token requests; FHIR reads need a live bearer token."""

    public_jwks: dict[str, Any] | None = None
    base: str = BASE
    token_url: str = TOKEN_URL
    client_id: str = "test-client"
    lifetime: int = 3600
    token_delay: float = 0.0
    smart_configuration: bool = True
    metadata_token: bool = True
    scripted: list[httpx.Response] = field(default_factory=list)
    token_requests: int = 0
    fhir_requests: int = 0
    forms: list[dict[str, str]] = field(default_factory=list)
    token_headers: list[httpx.Headers] = field(default_factory=list)
    discovery_requests: list[httpx.Request] = field(default_factory=list)
    fhir_requests_seen: list[httpx.Request] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    seen_jti: set[str] = field(default_factory=set)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def verify_assertion(self, assertion: str) -> dict[str, Any]:
        assert self.public_jwks is not None
        header = pyjwt.get_unverified_header(assertion)
        jwk = next(k for k in self.public_jwks["keys"] if k["kid"] == header["kid"])
        key = pyjwt.PyJWK(jwk).key
        claims: dict[str, Any] = pyjwt.decode(
            assertion,
            key=key,
            algorithms=[header["alg"]],
            audience=TOKEN_URL,
            issuer=self.client_id,
            options={"require": ["exp", "iat", "nbf", "jti", "iss", "sub", "aud"]},
        )
        assert claims["sub"] == self.client_id
        assert claims["exp"] - claims["iat"] <= 300
        assert claims["jti"] not in self.seen_jti
        self.seen_jti.add(claims["jti"])
        return claims

    def issue(self) -> str:
        token = f"tok-{next(self._counter)}-secretvalue"
        self.issued.append(token)
        return token

    async def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/oauth2/token"):
            self.token_requests += 1
            form = dict(parse_qsl(request.content.decode()))
            self.forms.append(form)
            self.token_headers.append(request.headers)
            if self.token_delay:
                await anyio.sleep(self.token_delay)
            if self.scripted:
                return self.scripted.pop(0)
            if form.get("client_assertion_type") == JWT_BEARER:
                try:
                    self.verify_assertion(form["client_assertion"])
                except (pyjwt.PyJWTError, AssertionError, StopIteration, KeyError):
                    return json_response(400, {"error": "invalid_client", "error_description": None})
            body: dict[str, Any] = {
                "access_token": self.issue(),
                "token_type": "bearer",
                "expires_in": self.lifetime,
            }
            if "scope" in form:
                body["scope"] = form["scope"]
            return json_response(200, body)
        if path.endswith("/.well-known/smart-configuration"):
            self.discovery_requests.append(request)
            if not self.smart_configuration:
                return httpx.Response(
                    404, text="<html>not found</html>", headers={"Content-Type": "text/html"}
                )
            return json_response(
                200, {"token_endpoint": TOKEN_URL, "authorization_endpoint": TOKEN_URL[:-5] + "authorize"}
            )
        if path.endswith("/metadata"):
            self.discovery_requests.append(request)
            security: dict[str, Any] = {"extension": []}
            if self.metadata_token:
                security["extension"].append(
                    {
                        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                        "extension": [
                            {"url": "authorize", "valueUri": TOKEN_URL[:-5] + "authorize"},
                            {"url": "token", "valueUri": TOKEN_URL},
                        ],
                    }
                )
            return json_response(
                200, {"resourceType": "CapabilityStatement", "rest": [{"security": security}]}
            )
        self.fhir_requests += 1
        self.fhir_requests_seen.append(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or token not in self.issued or token in self.revoked:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return json_response(200, {"resourceType": "Patient", "id": path.rsplit("/", 1)[-1]})


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_request, "TOKEN_RETRY_DELAY", 0.0)


class FakeClock:
    """A manual clock for the token manager (seconds)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return generate_private_key("RS384")


@pytest.fixture(scope="session")
def ec_key() -> SigningKey:
    return generate_private_key("ES384")


@pytest.fixture
def fake(rsa_key: SigningKey, ec_key: SigningKey) -> FakeEpic:
    return FakeEpic(public_jwks=public_jwks(rsa_key, ec_key))


Connect = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def connect(fake: FakeEpic) -> Connect:
    """``async with connect(auth) as http:`` an AsyncClient on the fake server, ``auth`` bound as the client does."""

    @asynccontextmanager
    async def _connect(auth: EpicAuth, base_url: str = BASE) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler), auth=auth) as client:
            auth.bind(http_client=client, base_url=base_url)
            yield client

    return _connect
