"""The httpx auth flow: bearer only to the FHIR origin, one replay after a 401, one refresh for many 401s,
nothing secret in the logs; the client-secret and refresh-token grants."""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

import anyio
import httpx
import pytest

from epic_fhir_async import TokenRequestError
from epic_fhir_async.auth import (
    AccessToken,
    BackendServicesAuth,
    ClientSecretAuth,
    InMemoryTokenCache,
    RefreshTokenAuth,
    SigningKey,
    StaticTokenAuth,
    TokenCacheKey,
)
from tests.conftest import json_response

if TYPE_CHECKING:
    from tests.auth.conftest import Connect, FakeClock
    from tests.conftest import FakeEpic

pytestmark = pytest.mark.anyio


async def test_bearer_goes_only_to_the_fhir_origin(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth) as http:
        await http.get(f"{fake.base}/Patient/a")
        await http.get(
            "https://files.elsewhere.example/bulk/file1", headers={"Authorization": "Bearer planted"}
        )
        await http.get(
            "http://fhir.example.org/interconnect-fhir-oauth/api/FHIR/R4/Patient/b"
        )  # other scheme
        await http.get("https://fhir.example.org:8443/api/FHIR/R4/Patient/c")  # other port
    first, *others = fake.fhir_requests_seen
    assert first.headers["authorization"].startswith("Bearer tok-")
    assert [r.headers.get("authorization") for r in others] == [None, None, None]


async def test_unbound_auth_sends_no_token(fake: FakeEpic, rsa_key: SigningKey) -> None:
    auth = StaticTokenAuth("static-token-value")
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler), auth=auth) as http:
        await http.get(f"{fake.base}/Patient/a")
    assert "authorization" not in fake.fhir_requests_seen[0].headers


async def test_a_401_refreshes_and_replays_once(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth) as http:
        assert (await http.get(f"{fake.base}/Patient/a")).status_code == 200
        fake.revoked.add(fake.issued[0])
        response = await http.post(f"{fake.base}/Patient/_search", content=b"name=x")
        assert response.status_code == 200
        assert fake.token_requests == 2
        # The replayed POST carried its body again and the new token.
        replay = fake.fhir_requests_seen[-1]
        assert replay.content == b"name=x"
        assert replay.headers["authorization"] == f"Bearer {fake.issued[1]}"
        # A token that is refused again is not refreshed in a loop: the 401 comes back to the caller.
        fake.revoked.add(fake.issued[1])
        fake.revoked.add("tok-3-secretvalue")
        assert (await http.get(f"{fake.base}/Patient/a")).status_code == 401
    assert fake.token_requests == 3


async def test_fifty_tasks_with_401_cause_one_refresh(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    fake.token_delay = 0.01
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth) as http:
        await http.get(f"{fake.base}/Patient/warmup")
        fake.revoked.add(fake.issued[0])
        statuses: list[int] = []

        async def read(i: int) -> None:
            statuses.append((await http.get(f"{fake.base}/Patient/p{i}")).status_code)

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(read, i)
    assert statuses == [200] * 50
    assert fake.token_requests == 2


async def test_a_401_drops_the_shared_cache_entry_only_while_it_holds_the_refused_token(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    cache = InMemoryTokenCache()
    key = TokenCacheKey(fake.token_url, fake.client_id, "")
    first = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url, cache=cache)
    second = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url, cache=cache)
    async with connect(first) as http_first, connect(second) as http_second:
        assert (await http_first.get(f"{fake.base}/Patient/a")).status_code == 200
        assert (await http_second.get(f"{fake.base}/Patient/a")).status_code == 200  # the cached token
        refused = await cache.get(key)
        assert refused is not None
        assert fake.token_requests == 1
        fake.revoked.add(refused.value)
        # The token endpoint refuses the refresh: the refused token must not stay in the shared cache, where
        # every other auth would pick it up and fail with it.
        fake.scripted = [
            json_response(400, {"error": "unauthorized_client", "error_description": "disabled"})
        ]
        with pytest.raises(TokenRequestError):
            await http_first.get(f"{fake.base}/Patient/a")
        assert await cache.get(key) is None

        assert (await http_first.get(f"{fake.base}/Patient/a")).status_code == 200  # a new token, shared
        replacement = await cache.get(key)
        assert replacement is not None
        assert replacement is not refused
        requests = fake.token_requests
        # The second auth still holds the refused token: its 401 must not drop the replacement, which it then
        # uses without a token request of its own.
        assert (await http_second.get(f"{fake.base}/Patient/b")).status_code == 200
        assert await cache.get(key) is replacement
        assert fake.token_requests == requests
        assert second.token_manager.current is replacement


async def test_expiry_between_bursts_costs_one_request_each(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey, clock: FakeClock
) -> None:
    fake.lifetime = 3
    fake.token_delay = 0.01
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url, clock=clock)
    async with connect(auth) as http:
        for _ in range(2):
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(http.get, f"{fake.base}/Patient/p{i}")
            clock.advance(3.0)
    assert fake.token_requests == 2


async def test_token_and_assertion_never_reach_the_logs(
    fake: FakeEpic,
    connect: Connect,
    rsa_key: SigningKey,
    caplog: pytest.LogCaptureFixture,
    no_retry_delay: None,
) -> None:
    fake.smart_configuration = False
    fake.scripted = [httpx.Response(400)]  # exercise the retry log line too
    auth = BackendServicesAuth(fake.client_id, rsa_key)
    with caplog.at_level(logging.DEBUG):
        async with connect(auth) as http:
            await http.get(f"{fake.base}/Patient/a")
            fake.revoked.add(fake.issued[0])
            await http.get(f"{fake.base}/Patient/b")
            token = await auth.get_token()
            logging.getLogger("epic_fhir_async.test").debug("token object: %r %s", token, token)
    assert fake.token_requests == 3
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert any("got a token for client test-client" in r.getMessage() for r in caplog.records)
    for secret in [*fake.issued, *(f["client_assertion"] for f in fake.forms)]:
        assert secret not in text
    assert "PRIVATE KEY" not in text


async def test_client_secret_basic_urlencodes_id_and_secret(fake: FakeEpic, connect: Connect) -> None:
    auth = ClientSecretAuth("my client", "p@ss:w+rd", token_url=fake.token_url, scope="system/Patient.read")
    async with connect(auth) as http:
        assert (await http.get(f"{fake.base}/Patient/a")).status_code == 200
    header = fake.token_headers[0]["authorization"]
    scheme, _, encoded = header.partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    assert (user, password) == ("my+client", "p%40ss%3Aw%2Brd")
    assert (unquote_plus(user), unquote_plus(password)) == ("my client", "p@ss:w+rd")
    assert fake.forms[0] == {"grant_type": "client_credentials", "scope": "system/Patient.read"}
    assert "p@ss" not in repr(auth)


async def test_client_secret_post_puts_credentials_in_the_form(fake: FakeEpic, connect: Connect) -> None:
    auth = ClientSecretAuth("cid", "sec", method="client_secret_post", token_url=fake.token_url)
    async with connect(auth):
        await auth.get_token()
    assert fake.forms[0] == {"grant_type": "client_credentials", "client_id": "cid", "client_secret": "sec"}
    assert "authorization" not in fake.token_headers[0]


def _token_response(access: str, refresh: str | None = None) -> httpx.Response:
    body = {"access_token": access, "token_type": "Bearer", "expires_in": 3600}
    if refresh is not None:
        body["refresh_token"] = refresh
    return httpx.Response(200, json=body)


async def test_refresh_token_grant_keeps_the_newest_refresh_token(
    fake: FakeEpic, connect: Connect, clock: FakeClock
) -> None:
    fake.scripted = [_token_response("tok-a", "refresh-2"), _token_response("tok-b")]
    fake.issued += ["tok-a", "tok-b"]
    launch_token = AccessToken("tok-launch", expires_at=clock() + 10, issued_at=clock())
    fake.issued.append("tok-launch")
    auth = RefreshTokenAuth(
        "public-app", "refresh-1", access_token=launch_token, token_url=fake.token_url, clock=clock
    )
    async with connect(auth) as http:
        await http.get(f"{fake.base}/Patient/a")
        assert fake.token_requests == 0  # the launch's token is used first
        clock.advance(10)
        await http.get(f"{fake.base}/Patient/a")
        assert fake.forms[-1] == {
            "grant_type": "refresh_token",
            "refresh_token": "refresh-1",
            "client_id": "public-app",
        }
        assert auth.refresh_token == "refresh-2"
        clock.advance(3600)
        await http.get(f"{fake.base}/Patient/a")
        assert fake.forms[-1]["refresh_token"] == "refresh-2"
        assert auth.refresh_token == "refresh-2"  # no new one sent: keep the last
    assert "refresh-2" not in repr(auth)
    assert [r.headers["authorization"] for r in fake.fhir_requests_seen] == [
        "Bearer tok-launch",
        "Bearer tok-a",
        "Bearer tok-b",
    ]


async def test_refresh_token_grant_with_a_secret_or_a_key(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    fake.scripted = [_token_response("tok-a"), _token_response("tok-b")]
    with_secret = RefreshTokenAuth("conf-app", "r1", client_secret="s", token_url=fake.token_url)
    with_key = RefreshTokenAuth("test-client", "r2", private_key=rsa_key, token_url=fake.token_url)
    async with connect(with_secret), connect(with_key):
        await with_secret.get_token()
        await with_key.get_token()
    assert "client_id" not in fake.forms[0]
    assert fake.token_headers[0]["authorization"].startswith("Basic ")
    assert fake.forms[1]["client_assertion_type"].endswith("jwt-bearer")
    assert fake.forms[1]["refresh_token"] == "r2"


def test_refresh_token_auth_validates() -> None:
    from epic_fhir_async import ConfigurationError

    with pytest.raises(ConfigurationError):
        RefreshTokenAuth("c", "")
    with pytest.raises(ConfigurationError):
        RefreshTokenAuth("c", "r", client_secret="s", private_key="x")
    with pytest.raises(ConfigurationError):
        ClientSecretAuth("c", "s", method="bogus")  # type: ignore[arg-type]
