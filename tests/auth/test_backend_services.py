"""BackendServicesAuth: the client assertion meets Epic's rules (verified with PyJWT, not the joserfc code
path the SDK signs with), the token form, discovery, and the per-(token URL, client, scope) cache."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import jwt as pyjwt
import pytest

from epic_fhir_async import ConfigurationError
from epic_fhir_async.auth import (
    BackendServicesAuth,
    InMemoryTokenCache,
    SigningKey,
    build_client_assertion,
    public_jwks,
)

if TYPE_CHECKING:
    from tests.auth.conftest import Connect
    from tests.conftest import FakeEpic

pytestmark = pytest.mark.anyio

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _decode(assertion: str, key: SigningKey, audience: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = pyjwt.get_unverified_header(assertion)
    public = pyjwt.PyJWK(public_jwks(key)["keys"][0]).key
    claims = pyjwt.decode(assertion, key=public, algorithms=[key.algorithm], audience=audience)
    return header, claims


@pytest.mark.parametrize("key_fixture", ["rsa_key", "ec_key"])
def test_assertion_meets_every_epic_rule(key_fixture: str, request: pytest.FixtureRequest) -> None:
    key: SigningKey = request.getfixturevalue(key_fixture)
    aud = "https://fhir.epic.com/interconnect-fhir-oauth/oauth2/token"
    before = int(time.time())
    first = build_client_assertion(key, client_id="cid-123", audience=aud)
    second = build_client_assertion(
        key, client_id="cid-123", audience=aud, jku="https://keys.example.org/jwks.json"
    )
    after = int(time.time())
    header, claims = _decode(first, key, aud)
    assert header == {"alg": key.algorithm, "typ": "JWT", "kid": key.kid}
    assert claims["iss"] == claims["sub"] == "cid-123"
    assert claims["aud"] == aud  # exactly, a string
    assert isinstance(claims["jti"], str)
    assert len(claims["jti"]) <= 151
    assert uuid.UUID(claims["jti"]).version == 4
    # iat/nbf dated 30 s back for host clocks ahead of Epic's; exp 240 s ahead (docs/epic-notes.md §1.4).
    assert before - 30 <= claims["iat"] == claims["nbf"] <= after - 30
    assert claims["exp"] - claims["iat"] == 270
    assert claims["exp"] - claims["nbf"] <= 300
    header2, claims2 = _decode(second, key, aud)
    assert header2["jku"] == "https://keys.example.org/jwks.json"
    assert claims2["jti"] != claims["jti"]


def test_assertion_uses_the_injected_wall_clock_and_rejects_long_lifetimes(rsa_key: SigningKey) -> None:
    aud = "https://x.example/token"
    token = build_client_assertion(rsa_key, client_id="c", audience=aud, wall_clock=lambda: 2_000_000_000.5)
    claims = pyjwt.decode(
        token,
        key=pyjwt.PyJWK(public_jwks(rsa_key)["keys"][0]).key,
        algorithms=["RS384"],
        audience=aud,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert (claims["iat"], claims["exp"]) == (2_000_000_000 - 30, 2_000_000_240)
    with pytest.raises(ValueError):
        build_client_assertion(rsa_key, client_id="c", audience=aud, lifetime=301)


async def test_token_request_form_and_headers(fake: FakeEpic, connect: Connect, rsa_key: SigningKey) -> None:
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth) as http:
        response = await http.get(f"{fake.base}/Patient/erXuFYUfucBZaryVksYEcMg3")
    assert response.status_code == 200
    (form,) = fake.forms
    assert set(form) == {"grant_type", "client_assertion_type", "client_assertion"}  # no scope unless given
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == JWT_BEARER
    _, claims = _decode(form["client_assertion"], rsa_key, fake.token_url)
    assert claims["iss"] == fake.client_id
    (headers,) = fake.token_headers
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["accept"] == "application/json"
    assert "authorization" not in headers  # the token request never carries a bearer
    assert fake.fhir_requests_seen[0].headers["authorization"] == f"Bearer {fake.issued[0]}"


async def test_scope_is_sent_when_given_and_parsed_back(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    auth = BackendServicesAuth(
        fake.client_id,
        rsa_key,
        token_url=fake.token_url,
        scope=["system/Patient.read", "system/Observation.read"],
    )
    async with connect(auth):
        token = await auth.get_token()
    assert fake.forms[0]["scope"] == "system/Patient.read system/Observation.read"
    assert token.scopes == {"system/Patient.read", "system/Observation.read"}


async def test_jku_and_ec_key_reach_the_server(fake: FakeEpic, connect: Connect, ec_key: SigningKey) -> None:
    auth = BackendServicesAuth(
        fake.client_id, ec_key, token_url=fake.token_url, jku="https://keys.example.org/jwks"
    )
    async with connect(auth):
        await auth.get_token()
    header = pyjwt.get_unverified_header(fake.forms[0]["client_assertion"])
    assert header["alg"] == "ES384"
    assert header["jku"] == "https://keys.example.org/jwks"


async def test_rotation_signs_with_the_newest_key(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    auth = BackendServicesAuth(fake.client_id, [rsa_key, ec_key], token_url=fake.token_url)
    assert auth.signing_key.kid == ec_key.kid
    assert [k["kid"] for k in auth.public_jwks()["keys"]] == [rsa_key.kid, ec_key.kid]
    async with connect(auth):
        await auth.get_token()
    assert pyjwt.get_unverified_header(fake.forms[0]["client_assertion"])["kid"] == ec_key.kid


async def test_every_token_request_has_a_fresh_jti(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth):
        for _ in range(3):
            auth.invalidate()
            await auth.get_token()
    jtis = {
        pyjwt.decode(f["client_assertion"], options={"verify_signature": False})["jti"] for f in fake.forms
    }
    assert len(jtis) == 3


async def test_token_url_is_discovered_once_from_smart_configuration(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    auth = BackendServicesAuth(fake.client_id, rsa_key)
    before = auth.token_url
    assert before is None
    async with connect(auth):
        for _ in range(3):
            auth.invalidate()
            await auth.get_token()
    assert auth.token_url == fake.token_url
    assert auth.endpoints is not None
    assert auth.endpoints.source == "smart-configuration"
    (discovery,) = fake.discovery_requests
    assert discovery.url.path.endswith("/.well-known/smart-configuration")
    assert discovery.headers["epic-client-id"] == fake.client_id
    assert fake.token_requests == 3


async def test_discovery_falls_back_to_the_capability_statement(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    fake.smart_configuration = False
    auth = BackendServicesAuth(fake.client_id, rsa_key)
    async with connect(auth):
        await auth.get_token()
    assert auth.token_url == fake.token_url
    assert auth.endpoints is not None
    assert auth.endpoints.source == "metadata"
    assert auth.endpoints.authorization_endpoint is not None
    metadata = fake.discovery_requests[-1]
    assert metadata.url.path.endswith("/metadata")
    assert metadata.headers["accept"] == "application/fhir+json"


async def test_no_token_endpoint_anywhere_is_a_configuration_error(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    fake.smart_configuration = False
    fake.metadata_token = False
    auth = BackendServicesAuth(fake.client_id, rsa_key)
    async with connect(auth):
        with pytest.raises(ConfigurationError, match="token_url="):
            await auth.get_token()
    assert fake.token_requests == 0


async def test_unbound_auth_without_token_url_is_a_configuration_error(rsa_key: SigningKey) -> None:
    auth = BackendServicesAuth("c", rsa_key)
    with pytest.raises(ConfigurationError):
        await auth.get_token()


async def test_a_shared_cache_serves_two_auth_objects(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    cache = InMemoryTokenCache()
    a = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url, cache=cache)
    b = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url, cache=cache)
    async with connect(a), connect(b):
        assert (await a.get_token()) is (await b.get_token())
    assert fake.token_requests == 1


def test_constructor_validates(rsa_key: SigningKey) -> None:
    with pytest.raises(ConfigurationError):
        BackendServicesAuth("", rsa_key)
    with pytest.raises(ConfigurationError):
        BackendServicesAuth("c", rsa_key, token_url="/oauth2/token")
    with pytest.raises(ConfigurationError):
        BackendServicesAuth("c", rsa_key, algorithm="ES384")
    text = repr(BackendServicesAuth("c", rsa_key, token_url="https://x.example/token"))
    assert rsa_key.kid in text
    assert "PRIVATE" not in text


async def test_discovery_never_downgrades_to_http_and_handles_junk() -> None:
    from epic_fhir_async import TransportError
    from epic_fhir_async.auth import discover_endpoints

    answers = {
        "/.well-known/smart-configuration": httpx.Response(
            200, json={"token_endpoint": "http://evil.example/token"}
        ),
        "/metadata": httpx.Response(
            200, text="<CapabilityStatement/>", headers={"Content-Type": "application/xml"}
        ),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return next(r for suffix, r in answers.items() if request.url.path.endswith(suffix))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(ConfigurationError, match="could not discover"):
            await discover_endpoints(http, "https://fhir.example.org/api/FHIR/R4/")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        with pytest.raises(TransportError):
            await discover_endpoints(http, "https://fhir.example.org/api/FHIR/R4")


async def test_rebinding_to_another_base_forgets_discovered_endpoints(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    auth = BackendServicesAuth(fake.client_id, rsa_key)
    async with connect(auth):
        await auth.get_token()
    assert auth.endpoints is not None
    async with connect(auth, base_url=fake.base.replace("/R4", "/STU3")):
        assert auth.endpoints is None
