"""A small Epic-like SMART server on httpx.MockTransport for the launch unit tests.

It plays the authorize step in :meth:`FakeSmart.authorize` (what the browser and Epic's login page would do),
then answers the token endpoint with Epic's launch context and an id_token signed with PyJWT, an
implementation independent of the joserfc code the SDK verifies with. The full emulator is exercised in
``test_on_sandbox.py`` and ``test_web_app_example.py``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import httpx
import jwt as pyjwt
import pytest

from epic_fhir_async import _json
from epic_fhir_async.auth import (
    AuthorizationRequest,
    SigningKey,
    SmartLaunch,
    generate_private_key,
    public_jwks,
)

ORIGIN = "https://fhir.example.org"
BASE = f"{ORIGIN}/interconnect-fhir-oauth/api/FHIR/R4"
OAUTH = f"{ORIGIN}/interconnect-fhir-oauth/oauth2"
AUTHORIZE_URL = f"{OAUTH}/authorize"
TOKEN_URL = f"{OAUTH}/token"
JWKS_URL = f"{ORIGIN}/interconnect-fhir-oauth/api/epic/2019/Security/Open/PublicKeys/530005/OIDC"
REDIRECT = "https://app.example.com/callback"
CLIENT_ID = "launch-client"
NOW = 1_780_000_000.0
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def json_response(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, content=_json.dumps(body), headers={"Content-Type": "application/json"})


class FakeClock:
    """Epoch seconds that tests move by hand (used as both the monotonic and the wall clock)."""

    def __init__(self, start: float = NOW) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    scope: str
    launch: str | None


@dataclass
class FakeSmart:
    """Authorize, token (authorization_code, refresh_token), OpenID discovery, JWKS and a FHIR read."""

    clock: FakeClock
    id_key: SigningKey
    published_key: SigningKey | None = None  # what the JWKS publishes, when not id_key
    client_secret: str | None = None
    client_jwks: dict[str, Any] | None = None
    lifetime: int = 3600
    persistent: bool = True
    rotate_refresh: bool = False
    fhir_gate: Callable[[], Awaitable[None]] | None = None  # awaited before answering a FHIR request
    scope_in_response: str = "launch patient/Patient.read patient/Observation.read openid fhirUser"
    context: dict[str, Any] = field(
        default_factory=lambda: {
            "patient": "eq081-VQEgP8drUUqCWzHfw3",
            "__epic.dstu2.patient": "TGwSd5DsUtFPi.RVwdDRPYpF7E09u8KO.Ee3BjzW1WtZ8B",
            "encounter": "eCE1sDm8fb3bWm2Eb2Uo0Vw3",
            "location": "e4W4rmGe9QzuGm2Dy4NBqVc0KDe6yGld6HW95UuN-Qd03",
            "loginDepartment": "1234",
            "need_patient_banner": "false",
            "smart_style_url": f"{ORIGIN}/interconnect-fhir-oauth/api/epic/2016/EDI/HTTP/style/100/x.json",
        }
    )
    id_token_overrides: dict[str, Any] = field(default_factory=dict)
    id_token_header: dict[str, Any] = field(default_factory=dict)
    smart_config: dict[str, Any] = field(
        default_factory=lambda: {
            "authorization_endpoint": AUTHORIZE_URL,
            "token_endpoint": TOKEN_URL,
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "client_secret_basic",
                "private_key_jwt",
            ],
        }
    )
    openid_at_base: bool = False
    openid_at_oauth: bool = True
    scripted_token: list[httpx.Response] = field(default_factory=list)
    grants: dict[str, Grant] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> client
    access: dict[str, float] = field(default_factory=dict)  # token -> expiry
    token_forms: list[dict[str, str]] = field(default_factory=list)
    token_headers: list[httpx.Headers] = field(default_factory=list)
    discovery: list[httpx.Request] = field(default_factory=list)
    jwks_requests: int = 0
    fhir_requests: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- the authorize step (browser + Epic login) -------------------------------------------------------
    def authorize(self, request: AuthorizationRequest, *, deny: bool = False) -> str:
        """The callback URL Epic would redirect to; asserts the authorize request follows Epic's rules."""
        params = dict(parse_qsl(httpx.URL(request.url).query.decode()))
        assert params["aud"] == BASE
        assert params["response_type"] == "code"
        assert params["code_challenge_method"] == "S256"
        if deny:
            return f"{params['redirect_uri']}?error=access_denied&error_description=User+declined&state={params['state']}"
        code = f"code-{next(self._ids)}-" + "x" * 600  # Epic's codes can be long JWTs: never truncate
        self.grants[code] = Grant(
            client_id=params["client_id"],
            redirect_uri=params["redirect_uri"],
            challenge=params["code_challenge"],
            nonce=params.get("nonce"),
            scope=params["scope"],
            launch=params.get("launch"),
        )
        return f"{params['redirect_uri']}?code={code}&state={params['state']}"

    # -- helpers ----------------------------------------------------------------------------------------
    def id_token(self, client_id: str, nonce: str | None) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": OAUTH,
            "sub": "eVsF0rG.I5uF1QWsDl1d8Jw3",
            "aud": client_id,
            "iat": now,
            "exp": now + 300,
            "fhirUser": f"{BASE}/Practitioner/eVsF0rG.I5uF1QWsDl1d8Jw3",
        }
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(self.id_token_overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        header = {"kid": self.id_key.kid, **self.id_token_header}
        alg = header.pop("alg", "RS256")
        key: Any = self.id_key.jwk.private_key
        if alg == "none":
            key = None
        elif alg.startswith("HS"):
            key = b"0123456789abcdef0123456789abcdef"
        return pyjwt.encode(claims, key, algorithm=alg, headers=header)

    def _client_from(self, form: dict[str, str], headers: httpx.Headers) -> str | None:
        auth = headers.get("authorization", "")
        if auth.startswith("Basic "):
            raw = base64.b64decode(auth[6:]).decode()
            cid, _, secret = raw.partition(":")
            if "client_id" in form or unquote_plus(secret) != self.client_secret:
                return None
            return unquote_plus(cid)
        if form.get("client_assertion_type") == JWT_BEARER:
            assert self.client_jwks is not None
            assertion = form["client_assertion"]
            kid = pyjwt.get_unverified_header(assertion)["kid"]
            jwk = next(k for k in self.client_jwks["keys"] if k["kid"] == kid)
            claims = pyjwt.decode(
                assertion,
                pyjwt.PyJWK(jwk).key,
                algorithms=[pyjwt.get_unverified_header(assertion)["alg"]],
                audience=TOKEN_URL,
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},  # on the fake clock
            )
            assert claims["iat"] <= self.clock() < claims["exp"] <= claims["iat"] + 300
            assert claims["iss"] == claims["sub"]
            return str(claims["iss"])
        if self.client_secret is not None or self.client_jwks is not None:
            return None  # a confidential client must authenticate
        return form.get("client_id")

    def _tokens(self, client_id: str, *, with_refresh: bool) -> dict[str, Any]:
        access = f"access-{next(self._ids)}-secretvalue"
        self.access[access] = self.clock() + self.lifetime
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "scope": self.scope_in_response,
        }
        if with_refresh:
            refresh = f"refresh-{next(self._ids)}-secretvalue"
            self.refresh_tokens[refresh] = client_id
            body["refresh_token"] = refresh
        return body

    # -- HTTP -------------------------------------------------------------------------------------------
    async def handler(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url.copy_with(query=None))
        if url == f"{BASE}/.well-known/smart-configuration":
            self.discovery.append(request)
            return json_response(200, self.smart_config)
        if url == f"{BASE}/.well-known/openid-configuration":
            if not self.openid_at_base:
                return httpx.Response(404, text="<html/>", headers={"Content-Type": "text/html"})
            return json_response(200, {"issuer": OAUTH, "jwks_uri": JWKS_URL})
        if url == f"{OAUTH}/.well-known/openid-configuration":
            if not self.openid_at_oauth:
                return httpx.Response(404, text="<html/>", headers={"Content-Type": "text/html"})
            return json_response(200, {"issuer": OAUTH, "jwks_uri": JWKS_URL})
        if url == JWKS_URL:
            self.jwks_requests += 1
            return json_response(200, public_jwks(self.published_key or self.id_key))
        if url == TOKEN_URL:
            return self._token(request)
        self.fhir_requests += 1
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.fhir_gate is not None:
            await self.fhir_gate()
        expiry = self.access.get(token)
        if expiry is None or expiry <= self.clock():
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return httpx.Response(
            200,
            content=_json.dumps({"resourceType": "Patient", "id": url.rsplit("/", 1)[-1]}),
            headers={"Content-Type": "application/fhir+json"},
        )

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = dict(parse_qsl(request.content.decode()))
        self.token_forms.append(form)
        self.token_headers.append(request.headers)
        if self.scripted_token:
            return self.scripted_token.pop(0)
        client_id = self._client_from(form, request.headers)
        if client_id is None:
            return json_response(400, {"error": "invalid_client", "error_description": None})
        if form.get("grant_type") == "authorization_code":
            grant = self.grants.pop(form.get("code", ""), None)
            if (
                grant is None
                or grant.client_id != client_id
                or grant.redirect_uri != form.get("redirect_uri")
            ):
                return json_response(400, {"error": "invalid_grant", "error_description": None})
            verifier = form.get("code_verifier", "")
            digest = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            )
            if digest != grant.challenge:
                return json_response(400, {"error": "invalid_grant", "error_description": None})
            confidential = self.client_secret is not None or self.client_jwks is not None
            body = self._tokens(client_id, with_refresh=confidential and self.persistent)
            body.update(self.context)
            body["state"] = "echoed-by-epic"
            if "openid" in grant.scope.split():
                body["id_token"] = self.id_token(client_id, grant.nonce)
            return json_response(200, body)
        if form.get("grant_type") == "refresh_token":
            owner = self.refresh_tokens.get(form.get("refresh_token", ""))
            if owner != client_id:
                return json_response(400, {"error": "invalid_grant", "error_description": None})
            if self.rotate_refresh:
                del self.refresh_tokens[form["refresh_token"]]
            return json_response(200, self._tokens(client_id, with_refresh=self.rotate_refresh))
        return json_response(400, {"error": "unsupported_grant_type", "error_description": None})


@pytest.fixture(scope="session")
def id_key() -> SigningKey:
    return generate_private_key("RS256", kid="liCulTIaitUzjfUh2AqNiMro47X9HcVcd9XPi8LDJKA=")


@pytest.fixture(scope="session")
def client_key() -> SigningKey:
    return generate_private_key("RS384")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock, id_key: SigningKey) -> FakeSmart:
    return FakeSmart(clock=clock, id_key=id_key)


MakeLaunch = Callable[..., AbstractAsyncContextManager[SmartLaunch]]


@pytest.fixture
def make_launch(fake: FakeSmart, clock: FakeClock) -> MakeLaunch:
    """``async with make_launch(**kwargs) as launch``: a SmartLaunch on the fake server's transport."""

    @asynccontextmanager
    async def _make(**kwargs: Any) -> AsyncIterator[SmartLaunch]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as http:
            options: dict[str, Any] = {
                "client_id": CLIENT_ID,
                "redirect_uri": REDIRECT,
                "scopes": "openid fhirUser launch/patient patient/Patient.read",
                "http_client": http,
                "clock": clock,
                "wall_clock": clock,
            }
            options.update(kwargs)
            yield SmartLaunch(BASE, **options)

    return _make
