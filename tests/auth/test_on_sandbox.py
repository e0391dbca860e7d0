"""Backend Services auth end to end against the embedded Epic sandbox (its token endpoint verifies the
assertions like Epic does): a read with BackendServicesAuth; two bursts of 500 reads around an expiry cost
exactly two token requests, counted on the caller's http_client; fifty 401s cost one refresh."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from epic_fhir_async import BackendServicesAuth, EpicFHIRClient
from epic_fhir_async.auth import SigningKey, public_jwks
from epic_fhir_async.sandbox import EpicSandbox, SandboxClock

if TYPE_CHECKING:
    from tests.auth.conftest import FakeClock

pytestmark = pytest.mark.anyio

CAMILA = "erXuFYUfucBZaryVksYEcMg3"
CLIENT_ID = "auth-tests-backend-app"


class CountingTransport(httpx.AsyncBaseTransport):
    """Wraps the sandbox transport and counts what goes through the caller's http_client."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.token_requests = 0
        self.fhir_requests = 0
        #: When set, the first ``hold_until`` FHIR requests wait until all of them have arrived.
        self.gate: anyio.Event | None = None
        self.hold_until = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            self.token_requests += 1
        else:
            self.fhir_requests += 1
            if self.gate is not None and self.fhir_requests <= self.hold_until:
                if self.fhir_requests == self.hold_until:
                    self.gate.set()
                await self.gate.wait()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.inner.handle_async_request(request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


def _sandbox(key: SigningKey, token_lifetime: float = 3600.0) -> EpicSandbox:
    # A frozen sandbox clock: a slow machine cannot expire the 3-second token in the middle of a burst.
    clock = SandboxClock(frozen_at=time.time())
    sandbox = EpicSandbox(seed=0, patients=20, token_lifetime=token_lifetime, clock=clock)
    sandbox.register_client(CLIENT_ID, public_jwks(key))
    # A little latency on every request makes the tasks of a burst really overlap (the in-process transport
    # would otherwise run them one after another and single-flight would never be put to the test).
    sandbox.faults.latency = 0.005
    return sandbox


async def test_backend_services_reads_camila(rsa_key: SigningKey, caplog: pytest.LogCaptureFixture) -> None:
    sandbox = _sandbox(rsa_key)
    auth = BackendServicesAuth(CLIENT_ID, rsa_key, wall_clock=sandbox.clock.now)
    with caplog.at_level(logging.DEBUG):
        async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=sandbox.transport()) as client:
            patient = await client.read("Patient", CAMILA)
            token = await auth.get_token()
    assert patient["resourceType"] == "Patient"
    assert patient["id"] == CAMILA
    assert auth.token_url == sandbox.token_url  # discovered from the sandbox's smart-configuration
    assert sandbox.stats["token_requests"] == 1
    assert token.value not in caplog.text


@pytest.mark.parametrize("key_fixture", ["rsa_key", "ec_key"])
async def test_two_bursts_around_an_expiry_cost_two_token_requests(
    key_fixture: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    key: SigningKey = request.getfixturevalue(key_fixture)
    sandbox = _sandbox(key, token_lifetime=3.0)
    counting = CountingTransport(sandbox.transport())
    auth = BackendServicesAuth(
        CLIENT_ID, key, token_url=sandbox.token_url, clock=clock, wall_clock=sandbox.clock.now
    )
    async with (
        httpx.AsyncClient(transport=counting) as http,
        EpicFHIRClient(sandbox.base_url, auth=auth, http_client=http, retry=False) as client,
    ):

        async def burst() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(500):
                    tg.start_soon(client.read, "Patient", CAMILA)

        await burst()
        assert counting.token_requests == 1
        # Let the 3-second token expire for the server and for the token manager alike.
        sandbox.clock.advance(3.5)
        clock.advance(3.5)
        await burst()
    assert counting.token_requests == 2
    assert counting.max_in_flight > 10  # the bursts really were concurrent
    assert counting.fhir_requests == 1000  # no 401 replays: the token was refreshed before use
    assert sandbox.stats["token_requests"] == 2


async def test_fifty_tasks_that_get_a_401_cause_one_refresh(rsa_key: SigningKey, clock: FakeClock) -> None:
    sandbox = _sandbox(rsa_key, token_lifetime=3600.0)
    counting = CountingTransport(sandbox.transport())
    auth = BackendServicesAuth(
        CLIENT_ID, rsa_key, token_url=sandbox.token_url, clock=clock, wall_clock=sandbox.clock.now
    )
    async with (
        httpx.AsyncClient(transport=counting) as http,
        EpicFHIRClient(sandbox.base_url, auth=auth, http_client=http, retry=False) as client,
    ):
        await client.read("Patient", CAMILA)
        # The server expires the token; the manager's clock does not move, so it still looks fresh and
        # all fifty requests go out with it (held until all fifty are in flight) and come back 401.
        sandbox.clock.advance(3601)
        counting.gate, counting.hold_until = anyio.Event(), 1 + 50
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(client.read, "Patient", CAMILA)
    assert counting.token_requests == 2
    assert counting.fhir_requests == 1 + 50 + 50  # each of the fifty replayed once
