"""``client.with_auth(auth)``: one client's pool, retries, 429 pause and limits, each view with its own user's
token; and the explicit trade of passing your own ``http_client`` (no retries unless you say so)."""

from __future__ import annotations

import warnings

import anyio
import httpx
import pytest

from epic_fhir_async import (
    ClientClosed,
    ConfigurationError,
    EpicFHIRClient,
    NoRetryWarning,
    ResponseTooLarge,
    RetryPolicy,
    RetryTransport,
    ServerError,
    SmartAuth,
    SmartTokenSet,
    StaticTokenAuth,
)

BASE = "https://fhir.example.org/api/FHIR/R4"
JSON_CT = {"Content-Type": "application/fhir+json"}
ALICE, BOB, APP = "alice-token-0123456789", "bob-token-0123456789", "app-token-0123456789"

pytestmark = pytest.mark.anyio


class FakeTime:
    """The retrying transport's clock and sleep: waits are recorded, not slept."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def patient(request: httpx.Request) -> httpx.Response:
    pid = request.url.path.rsplit("/", 1)[1]
    return httpx.Response(200, json={"resourceType": "Patient", "id": pid}, headers=JSON_CT)


async def test_each_view_sends_its_own_users_token_through_the_one_pool() -> None:
    seen: list[tuple[str, str | None]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(0.001)  # let the users' requests interleave
        seen.append((request.url.path.rsplit("/", 1)[1], request.headers.get("Authorization")))
        return patient(request)

    async with EpicFHIRClient(BASE, transport=httpx.MockTransport(handler)) as client:
        alice = client.with_auth(StaticTokenAuth(ALICE))
        bob = client.with_auth(StaticTokenAuth(BOB))
        assert alice.http is client.http is bob.http
        assert alice.base_url == client.base_url

        async def read(view: EpicFHIRClient, pid: str) -> None:
            assert (await view.read("Patient", pid))["id"] == pid

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(read, alice, f"alice{i}")
                tg.start_soon(read, bob, f"bob{i}")
        await client.read("Patient", "nobody")
    assert len(seen) == 21
    for pid, authorization in seen:
        expected = {"alice": f"Bearer {ALICE}", "bob": f"Bearer {BOB}"}.get(pid.rstrip("0123456789"))
        assert authorization == expected, pid


async def test_a_429_one_user_gets_pauses_every_users_requests() -> None:
    fake = FakeTime()
    sent_at: dict[str, float] = {}
    limited = True

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal limited
        if limited:
            limited = False
            return httpx.Response(429, headers={"Retry-After": "10"})
        sent_at.setdefault(request.url.path.rsplit("/", 1)[1], fake.now)
        return patient(request)

    transport = RetryTransport(
        httpx.MockTransport(handler), sleep=fake.sleep, clock=fake.clock, rand=lambda: 0
    )
    async with EpicFHIRClient(BASE, transport=transport) as client:
        alice = client.with_auth(StaticTokenAuth(ALICE))
        bob = client.with_auth(StaticTokenAuth(BOB))

        async with anyio.create_task_group() as tg:
            tg.start_soon(alice.read, "Patient", "a")
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            tg.start_soon(bob.read, "Patient", "b")  # Bob never saw a 429, yet waits behind Alice's
        assert client._session.retries == 1  # one retry count for the whole app
    assert sent_at["a"] >= 1010.0
    assert sent_at["b"] >= 1010.0


async def test_views_keep_the_clients_limits_deadline_and_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = b'{"resourceType": "Patient", "id": "big", "text": "' + b"x" * 500 + b'"}'
        headers = {**JSON_CT, "Content-Length": str(len(body))}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))

    async with EpicFHIRClient(
        BASE,
        transport=httpx.MockTransport(handler),
        max_resource_bytes=200,
        timeout=7.5,
        epic_client_id="the-app",
    ) as client:
        view = client.with_auth(StaticTokenAuth(ALICE))
        assert (view.timeout, view.max_resource_bytes) == (7.5, 200)
        with pytest.raises(ResponseTooLarge):
            await view.read("Patient", "big")
    assert seen[0].headers["Epic-Client-ID"] == "the-app"
    assert seen[0].headers["Accept"] == "application/fhir+json"


async def test_closing_a_view_closes_nothing_and_a_closed_client_stops_its_views() -> None:
    async with EpicFHIRClient(BASE, transport=httpx.MockTransport(patient)) as client:
        async with client.with_auth(StaticTokenAuth(ALICE)) as view:
            await view.read("Patient", "1")
        await view.aclose()
        assert not client.http.is_closed
        later = client.with_auth(StaticTokenAuth(BOB))
        assert (await later.read("Patient", "2"))["id"] == "2"
    with pytest.raises(ClientClosed, match=r"with_auth\) is closed"):
        await later.read("Patient", "3")
    with pytest.raises(ClientClosed, match="view"):
        async with client.with_auth(StaticTokenAuth(ALICE)):
            pass


async def test_the_clients_own_auth_is_left_alone() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return patient(request)

    app_auth = StaticTokenAuth(APP)
    async with EpicFHIRClient(BASE, auth=app_auth, transport=httpx.MockTransport(handler)) as client:
        view = client.with_auth(StaticTokenAuth(ALICE))
        await view.read("Patient", "1")
        await client.read("Patient", "2")
        assert client.auth is app_auth
        assert view.auth is not app_auth
    assert seen == [f"Bearer {ALICE}", f"Bearer {APP}"]


async def test_with_auth_refuses_no_auth_a_bare_token_and_another_servers_tokens() -> None:
    tokens = SmartTokenSet(
        access_token=ALICE,
        expires_at=4_000_000_000.0,
        client_id="web",
        token_url="https://other.example.org/oauth2/token",
        fhir_base="https://other.example.org/api/FHIR/R4",
    )
    async with EpicFHIRClient(BASE, transport=httpx.MockTransport(patient)) as client:
        with pytest.raises(ConfigurationError, match="needs an auth"):
            client.with_auth(None)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="StaticTokenAuth") as bare:
            client.with_auth(ALICE)  # type: ignore[arg-type]
        assert ALICE not in str(bare.value)
        with pytest.raises(ConfigurationError, match="refusing to send them"):
            client.with_auth(SmartAuth(tokens))


# -- your own http_client: the trade is explicit ----------------------------------------------------------


def flaky() -> tuple[httpx.MockTransport, list[int]]:
    """A server that answers 503 once, then 200; the list counts requests."""
    count = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        count[0] += 1
        return httpx.Response(503) if count[0] == 1 else patient(request)

    return httpx.MockTransport(handler), count


async def test_your_own_http_client_without_retry_false_warns_that_it_is_not_retried() -> None:
    transport, count = flaky()
    async with httpx.AsyncClient(transport=transport) as own:
        with pytest.warns(NoRetryWarning, match="no retries and no shared 429 pause"):
            client = EpicFHIRClient(BASE, http_client=own)
        with pytest.raises(ServerError):
            await client.read("Patient", "1")  # what the warning said: not retried
    assert count[0] == 1


async def test_retry_false_says_so_and_silences_the_warning() -> None:
    transport, _ = flaky()
    async with httpx.AsyncClient(transport=transport) as own:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            EpicFHIRClient(BASE, http_client=own, retry=False)


async def test_your_own_client_built_on_retry_transport_keeps_retries() -> None:
    transport, count = flaky()
    fake = FakeTime()
    retrying = RetryTransport(transport, sleep=fake.sleep, clock=fake.clock, rand=lambda: 0)
    async with (
        httpx.AsyncClient(transport=retrying) as own,
        EpicFHIRClient(BASE, http_client=own, retry=False) as client,
    ):
        assert (await client.read("Patient", "1"))["id"] == "1"
    assert count[0] == 2


async def test_a_retry_policy_cannot_be_given_with_your_own_http_client() -> None:
    async with httpx.AsyncClient() as own:
        with pytest.raises(ConfigurationError, match="RetryTransport"):
            EpicFHIRClient(BASE, http_client=own, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(ConfigurationError, match="or False"):
        EpicFHIRClient(BASE, retry=True)  # type: ignore[arg-type]


async def test_retry_false_on_the_clients_own_transport_sends_once() -> None:
    transport, count = flaky()
    async with EpicFHIRClient(BASE, transport=transport, retry=False) as client:
        with pytest.raises(ServerError):
            await client.read("Patient", "1")
    assert count[0] == 1
