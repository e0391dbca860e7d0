"""Clients registered by JWK Set URL, over raw HTTP: fetch only on a cache miss or a JWT the
cached keys cannot verify, Cache-Control max-age / no-store under a 29-hour ceiling; static uploads keep only
kty/e/n; ES256/ES384 only for JWK Set clients. The JWK Set is served in-process by an httpx.MockTransport that
counts its fetches."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from epic_fhir_async.sandbox import EpicSandbox, SandboxClock

pytestmark = pytest.mark.anyio

JKU = "https://keys.example.test/app/jwks.json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
HOURS = 3600.0


class JwksHost:
    """A JWK Set URL: serves ``keys`` with an optional Cache-Control header and counts requests."""

    def __init__(self, *keys: RSAKey | ECKey) -> None:
        self.keys = list(keys)
        self.cache_control: str | None = None
        self.status = 200
        self.hits = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == JKU
        self.hits += 1
        headers = {"cache-control": self.cache_control} if self.cache_control else {}
        return httpx.Response(
            self.status, headers=headers, json={"keys": [k.as_dict(private=False) for k in self.keys]}
        )


@pytest.fixture
def key1(rsa_key: RSAKey) -> RSAKey:
    return rsa_key  # conftest's session key (kid "rsa-1")


@pytest.fixture(scope="module")
def key2() -> RSAKey:
    key: RSAKey = RSAKey.generate_key(2048, parameters={"kid": "key-2"})
    return key


def sandbox(host: JwksHost, **options: Any) -> EpicSandbox:
    sb = EpicSandbox(
        seed=0,
        patients=0,
        clock=SandboxClock(frozen_at=1_780_000_000.0),
        jku_transport=httpx.MockTransport(host),
        **options,
    )
    sb.register_client("jku-client", jku=JKU)
    return sb


async def request_token(
    sb: EpicSandbox, key: RSAKey | ECKey, alg: str = "RS384", client: str = "jku-client", **header: Any
) -> httpx.Response:
    now = int(sb.clock.now())
    claims = {"iss": client, "sub": client, "aud": sb.token_url, "jti": str(uuid.uuid4()), "exp": now + 240}
    hdr = {"alg": alg, "typ": "JWT", "kid": key.kid, **header}
    assertion = jwt.encode({k: v for k, v in hdr.items() if v is not None}, claims, key, algorithms=[alg])
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        return await http.post(sb.token_url, data=form)


async def test_first_token_fetches_then_the_cache_serves(key1: RSAKey) -> None:
    host = JwksHost(key1)
    sb = sandbox(host)
    assert (await request_token(sb, key1)).status_code == 200
    assert (await request_token(sb, key1)).status_code == 200
    assert host.hits == 1
    assert (sb.stats["jku_fetches"], sb.stats["jku_fetches:jku-client"], sb.stats["jku_cache_hits"]) == (
        1,
        1,
        1,
    )


async def test_new_kid_triggers_one_refetch_then_both_keys_are_cached(key1: RSAKey, key2: RSAKey) -> None:
    host = JwksHost(key1)
    sb = sandbox(host)
    assert (await request_token(sb, key1)).status_code == 200
    host.keys.append(key2)  # rotation: the app publishes its new key, then signs with it
    assert (await request_token(sb, key2)).status_code == 200
    assert host.hits == 2
    assert (await request_token(sb, key1)).status_code == 200
    assert (await request_token(sb, key2)).status_code == 200
    assert host.hits == 2


async def test_a_jwt_the_keys_cannot_verify_fetches_once_per_presented_jwt(
    key1: RSAKey, key2: RSAKey
) -> None:
    host = JwksHost(key1)
    sb = sandbox(host)
    assert (await request_token(sb, key1)).status_code == 200
    for attempt in (1, 2):
        response = await request_token(sb, key2)  # kid not in the set, not even after a refetch
        assert response.status_code == 400
        assert response.json() == {"error": "invalid_client", "error_description": None}
        assert sb.oauth.last_failure == "unknown_kid"
        assert host.hits == 1 + attempt
    impostor = RSAKey.generate_key(2048, parameters={"kid": str(key1.kid)})  # right kid, wrong key
    assert (await request_token(sb, impostor)).status_code == 400
    assert sb.oauth.last_failure == "bad_signature"
    assert host.hits == 4


@pytest.mark.parametrize(
    ("cache_control", "fresh_for"),
    [(None, 29 * HOURS), ("public, max-age=60", 60.0), ("max-age=999999999", 29 * HOURS), ("no-store", 0.0)],
)
async def test_cache_lifetime_follows_cache_control_under_29_hours(
    key1: RSAKey, cache_control: str | None, fresh_for: float
) -> None:
    host = JwksHost(key1)
    host.cache_control = cache_control
    sb = sandbox(host)
    assert (await request_token(sb, key1)).status_code == 200
    if fresh_for:
        sb.clock.advance(fresh_for - 1)
        assert (await request_token(sb, key1)).status_code == 200
        assert host.hits == 1
        sb.clock.advance(1)
    assert (await request_token(sb, key1)).status_code == 200
    assert host.hits == 2


async def test_max_cache_ceiling_is_configurable(key1: RSAKey) -> None:
    host = JwksHost(key1)
    sb = sandbox(host, jku_max_cache=10.0)
    await request_token(sb, key1)
    sb.clock.advance(10.0)
    await request_token(sb, key1)
    assert host.hits == 2


async def test_jku_header_must_be_the_registered_url(key1: RSAKey) -> None:
    host = JwksHost(key1)
    sb = sandbox(host)
    assert (await request_token(sb, key1, jku=JKU)).status_code == 200
    wrong = await request_token(sb, key1, jku="https://attacker.example.test/jwks.json")
    assert wrong.status_code == 400
    assert sb.oauth.last_failure == "bad_jku"
    assert host.hits == 1  # the foreign URL is never fetched


@pytest.mark.parametrize("failure", ["status", "network", "garbage"])
async def test_unreachable_jku_is_invalid_client(key1: RSAKey, failure: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if failure == "network":
            raise httpx.ConnectError("unreachable", request=request)
        if failure == "status":
            return httpx.Response(503)
        return httpx.Response(200, content=b"<html>not a JWK Set</html>")

    sb = EpicSandbox(seed=0, patients=0, jku_transport=httpx.MockTransport(handler))
    sb.register_client("jku-client", jku=JKU)
    response = await request_token(sb, key1)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client"
    assert sb.oauth.last_failure == "jku_unavailable"
    assert sb.stats["jku_fetch_failures"] == 1


@pytest.mark.parametrize(("curve", "alg"), [("P-256", "ES256"), ("P-384", "ES384")])
async def test_ec_keys_work_for_jku_clients(curve: str, alg: str) -> None:
    key = ECKey.generate_key(curve, parameters={"kid": f"ec-{curve}"})
    sb = sandbox(JwksHost(key))
    assert (await request_token(sb, key, alg)).status_code == 200


async def test_static_upload_keeps_only_kty_e_n_and_no_ec(key1: RSAKey) -> None:
    sb = EpicSandbox(seed=0, patients=0)
    with pytest.raises(ValueError, match="RSA"):
        sb.register_client(
            "static-ec", {"keys": [ECKey.generate_key("P-384").as_dict(private=False)]}, static=True
        )
    uploaded = {**key1.as_dict(private=False), "kid": "uploaded-kid", "alg": "RS256"}
    sb.register_client("static", {"keys": [uploaded]}, static=True)
    # kid and alg were discarded: any kid verifies against the one key, with any RS algorithm.
    assert (
        await request_token(sb, key1, "RS512", client="static", kid="not-the-uploaded-kid")
    ).status_code == 200
    ec = ECKey.generate_key("P-384", parameters={"kid": "x"})
    assert (await request_token(sb, ec, "ES384", client="static")).status_code == 400
    assert sb.oauth.last_failure in {"alg_key_mismatch", "bad_signature"}


def test_registration_arguments_are_checked(key1: RSAKey) -> None:
    sb = EpicSandbox(seed=0, patients=0)
    jwks = {"keys": [key1.as_dict(private=False)]}
    with pytest.raises(ValueError, match="exactly one"):
        sb.register_client("both", jwks, jku=JKU)
    with pytest.raises(ValueError, match="exactly one"):
        sb.register_client("neither")
    with pytest.raises(ValueError, match="http"):
        sb.register_client("ftp", jku="ftp://keys.example.test/jwks.json")
    with pytest.raises(ValueError, match="static"):
        sb.register_client("static-jku", jku=JKU, static=True)
