"""Client registry states and token validation over raw HTTP through the app.

Non-production vs production client IDs, SMART v1/v2/Epic scope styles, key sync delay, APIs added later (403
until synced), unmapped backend users, allow-listed audiences, and Epic's bare invalid_client for each JWT rule.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from epic_fhir_async.sandbox import EpicSandbox, SandboxClock

pytestmark = pytest.mark.anyio

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CAMILA = "erXuFYUfucBZaryVksYEcMg3"
INVALID_CLIENT = {"error": "invalid_client", "error_description": None}


@pytest.fixture(scope="module")
def key() -> RSAKey:
    generated: RSAKey = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    return generated


@pytest.fixture
def jwks(key: RSAKey) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False)]}


def new_sandbox(**options: Any) -> EpicSandbox:
    return EpicSandbox(seed=0, patients=0, clock=SandboxClock(frozen_at=1_780_000_000.0), **options)


def assertion(sb: EpicSandbox, key: RSAKey, client: str = "app", alg: str = "RS384", **claims: Any) -> str:
    now = int(sb.clock.now())
    body = {"iss": client, "sub": client, "aud": sb.token_url, "jti": str(uuid.uuid4()), "exp": now + 240}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode({"alg": alg, "typ": "JWT", "kid": key.kid}, body, key, algorithms=[alg])


async def post_token(sb: EpicSandbox, signed: str, **extra: str) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed,
    }
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        return await http.post(sb.token_url, data={**form, **extra})


async def test_production_client_id_is_refused_by_the_sandbox(key: RSAKey, jwks: dict[str, Any]) -> None:
    sb = new_sandbox()
    sb.register_client("app-nonprod", jwks)
    sb.register_client("app-prod", jwks, environment="production")
    assert (await post_token(sb, assertion(sb, key, "app-nonprod"))).status_code == 200
    wrong = await post_token(sb, assertion(sb, key, "app-prod"))
    assert (wrong.status_code, wrong.json()) == (400, INVALID_CLIENT)
    assert sb.oauth.last_failure == "wrong_environment"
    production = new_sandbox(environment="production", root_path="/FHIRProxy")
    production.register_client("app-nonprod", jwks, environment="non-production")
    production.register_client("app-prod", jwks)
    assert (await post_token(production, assertion(production, key, "app-prod"))).status_code == 200
    assert (await post_token(production, assertion(production, key, "app-nonprod"))).status_code == 400


@pytest.mark.parametrize(
    ("style", "scope"),
    [
        ("v1", "system/Observation.read system/Patient.read"),
        (
            "v2",
            "system/Observation.r?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory "
            "system/Observation.s?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory "
            "system/Patient.r system/Patient.s",
        ),
        ("epic", "Observation.read Observation.search Patient.read Patient.search"),
    ],
)
async def test_scope_style_per_client(key: RSAKey, jwks: dict[str, Any], style: Any, scope: str) -> None:
    sb = new_sandbox()
    sb.register_client(
        "app", jwks, resource_types=["Patient", "Observation?category=laboratory"], scope_style=style
    )
    body = (await post_token(sb, assertion(sb, key))).json()
    assert body["scope"] == scope
    assert body["token_type"].lower() == "bearer"
    assert body["expires_in"] == 3600
    assert "refresh_token" not in body


async def test_keys_work_only_after_the_sync_delay(key: RSAKey, jwks: dict[str, Any]) -> None:
    sb = new_sandbox()
    sb.register_client("app", jwks, sync_delay=1800.0)
    early = await post_token(sb, assertion(sb, key))
    assert (early.status_code, early.json()) == (400, INVALID_CLIENT)
    assert sb.oauth.last_failure == "not_synced"
    sb.clock.advance(1800.0)
    assert (await post_token(sb, assertion(sb, key))).status_code == 200


async def test_unmapped_backend_user_is_unauthorized_client(key: RSAKey, jwks: dict[str, Any]) -> None:
    sb = new_sandbox()
    sb.register_client("app", jwks, user_mapped=False)
    response = await post_token(sb, assertion(sb, key))
    assert (response.status_code, response.json()) == (400, {"error": "unauthorized_client"})


async def test_api_added_later_is_403_until_synced(key: RSAKey, jwks: dict[str, Any]) -> None:
    sb = new_sandbox()
    sb.register_client("app", jwks, resource_types=["Patient"])
    token = (await post_token(sb, assertion(sb, key))).json()["access_token"]
    sb.add_resource_types("app", ["Condition"], sync_delay=1800.0)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    async with httpx.AsyncClient(transport=sb.transport(), base_url=sb.base_url, headers=headers) as http:
        denied = await http.get("Condition", params={"patient": CAMILA})
        assert denied.status_code == 403
        assert denied.content == b""
        sb.clock.advance(1800.0)
        assert (await http.get("Condition", params={"patient": CAMILA})).status_code == 200
    assert "system/Condition.read" in (await post_token(sb, assertion(sb, key))).json()["scope"]


async def test_allow_listed_audience_is_accepted(key: RSAKey, jwks: dict[str, Any]) -> None:
    proxy = "https://proxy.example.test/epic/oauth2/token"
    sb = new_sandbox(token_audiences=(proxy,))
    sb.register_client("app", jwks)
    assert (await post_token(sb, assertion(sb, key, aud=proxy))).status_code == 200
    assert (await post_token(sb, assertion(sb, key, aud=[proxy]))).status_code == 200
    other = await post_token(sb, assertion(sb, key, aud="https://elsewhere.example.test/oauth2/token"))
    assert other.status_code == 400
    assert sb.oauth.last_failure == "bad_aud"


def _claims(**changes: Any) -> dict[str, Any]:
    return changes


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (_claims(aud="AUD/"), "bad_aud"),
        (_claims(exp="NOW+301"), "exp_too_far"),
        (_claims(exp="NOW-1"), "expired"),
        (_claims(nbf="NOW+60"), "nbf_in_future"),
        (_claims(iat="NOW-400"), "iat_window"),
        (_claims(jti="x" * 152), "jti_too_long"),
        (_claims(jti=12345), "bad_jti"),
        (_claims(sub="someone-else"), "sub_mismatch"),
        (_claims(iss="unknown", sub="unknown"), "unknown_client"),
    ],
)
async def test_each_assertion_rule_is_a_bare_invalid_client(
    key: RSAKey, jwks: dict[str, Any], changes: dict[str, Any], reason: str
) -> None:
    sb = new_sandbox()
    sb.register_client("app", jwks)
    now = int(sb.clock.now())

    def resolve(value: Any) -> Any:
        if value == "AUD/":
            return sb.token_url + "/"
        if isinstance(value, str) and value.startswith("NOW"):
            return now + int(value[3:])
        return value

    response = await post_token(sb, assertion(sb, key, **{k: resolve(v) for k, v in changes.items()}))
    assert (response.status_code, response.json()) == (400, INVALID_CLIENT)
    assert sb.oauth.last_failure == reason


async def test_replayed_jti_and_bad_alg_and_wrong_transport(key: RSAKey, jwks: dict[str, Any]) -> None:
    sb = new_sandbox()
    sb.register_client("app", jwks)
    signed = assertion(sb, key)
    assert (await post_token(sb, signed)).status_code == 200
    replay = await post_token(sb, signed)
    assert (replay.status_code, replay.json(), sb.oauth.last_failure) == (400, INVALID_CLIENT, "replayed_jti")
    assert (await post_token(sb, assertion(sb, key, alg="PS256"))).status_code == 400
    assert sb.oauth.last_failure == "bad_alg"
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        as_json = await http.post(sb.token_url, json={"grant_type": "client_credentials"})
        as_get = await http.get(sb.token_url)
        in_query = await http.post(f"{sb.token_url}?grant_type=client_credentials", data={"a": "b"})
    for response in (as_json, as_get, in_query):
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"


async def test_introspection(key: RSAKey, jwks: dict[str, Any]) -> None:
    sb = new_sandbox()
    sb.register_client("app", jwks, resource_types=["Patient"])
    token = (await post_token(sb, assertion(sb, key))).json()["access_token"]
    url = f"{sb.oauth_url}/introspect"
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        live = (await http.post(url, data={"token": token})).json()
        assert live["active"] is True
        assert (live["client_id"], live["scope"], live["iss"]) == ("app", "system/Patient.read", sb.oauth_url)
        assert live["exp"] == int(sb.clock.now()) + 3600
        assert (await http.post(url, data={"token": "nope"})).json() == {"active": False}
        sb.clock.advance(3600)
        assert (await http.post(url, data={"token": token})).json() == {"active": False}
        assert (await http.get(url, params={"token": token})).status_code == 400
