"""A client built from a launch's token set: refresh on expiry or 401, single-flight, without offline_access."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from epic_fhir_async import (
    ConfigurationError,
    EpicFHIRClient,
    ReauthorizationRequired,
    SmartAuth,
    SmartTokenSet,
)

from .conftest import BASE, FakeClock, FakeSmart, MakeLaunch

PATIENT = "eq081-VQEgP8drUUqCWzHfw3"


@asynccontextmanager
async def session(
    make_launch: MakeLaunch, fake: FakeSmart, *, confidential: bool = True, **auth_kwargs: Any
) -> AsyncIterator[tuple[EpicFHIRClient, SmartAuth]]:
    """Launch, then a client on the fake server whose auth is the launch's SmartAuth."""
    kwargs: dict[str, Any] = {}
    if confidential:
        fake.client_secret = kwargs["client_secret"] = "s3cret"
    async with make_launch(**kwargs) as launch:
        request = await launch.begin(launch="abc", iss=BASE)
        tokens = await launch.complete(request, fake.authorize(request))
        auth = launch.auth(tokens, **auth_kwargs)
        async with EpicFHIRClient(BASE, auth=auth, transport=httpx.MockTransport(fake.handler)) as client:
            yield client, auth


def refreshes(fake: FakeSmart) -> int:
    return sum(1 for f in fake.token_forms if f.get("grant_type") == "refresh_token")


@pytest.mark.anyio
async def test_the_launch_token_is_used_without_any_token_request(
    make_launch: MakeLaunch, fake: FakeSmart
) -> None:
    async with session(make_launch, fake) as (client, auth):
        await client.read("Patient", PATIENT)
        assert refreshes(fake) == 0
        assert auth.token_manager.fetches == 0


@pytest.mark.anyio
async def test_expiry_refreshes_before_the_request(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock
) -> None:
    async with session(make_launch, fake) as (client, auth):
        first = auth.token_set
        clock.advance(3595)  # inside the refresh margin
        assert (await client.read("Patient", PATIENT))["id"] == PATIENT
        assert refreshes(fake) == 1
        assert auth.token_set.access_token != first.access_token
        assert auth.token_set.expires_at == clock() + 3600
        # the launch context and the launch's id_token survive the refresh
        assert auth.token_set.patient == first.patient
        assert auth.token_set.id_token == first.id_token
        assert auth.token_set.fhir_user == first.fhir_user


@pytest.mark.anyio
async def test_a_token_that_dies_during_a_request_is_refreshed_and_the_request_replayed(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock
) -> None:
    async with session(make_launch, fake) as (client, auth):
        old = auth.token_set.access_token
        fake.access[old] = clock() - 1  # the server's view: expired (clock skew, early revocation)
        assert (await client.read("Patient", PATIENT))["id"] == PATIENT
        assert refreshes(fake) == 1
        sent = next(f for f in fake.token_forms if f.get("grant_type") == "refresh_token")
        assert sent["refresh_token"] == (await launched_refresh_token(fake))
        assert "authorization" in fake.token_headers[-1]  # the confidential client authenticates


async def launched_refresh_token(fake: FakeSmart) -> str:
    return next(iter(fake.refresh_tokens))


@pytest.mark.anyio
async def test_many_concurrent_401s_cause_one_refresh(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock
) -> None:
    tasks = 25
    arrived = 0
    all_in = anyio.Event()

    async def gate() -> None:
        # hold every request until all of them were sent with the old token
        nonlocal arrived
        arrived += 1
        if arrived >= tasks:
            all_in.set()
        await all_in.wait()

    async with session(make_launch, fake) as (client, auth):
        fake.access[auth.token_set.access_token] = clock() - 1
        fake.fhir_gate = gate
        results: list[str] = []

        async def read() -> None:
            results.append((await client.read("Patient", PATIENT))["id"])

        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(read)
    assert results == [PATIENT] * tasks
    assert refreshes(fake) == 1
    assert fake.fhir_requests == 2 * tasks  # each request sent once with the old token, replayed once


@pytest.mark.anyio
async def test_many_concurrent_requests_after_expiry_cause_one_refresh(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock
) -> None:
    async with session(make_launch, fake) as (client, _):
        clock.advance(3700)
        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(client.read, "Patient", PATIENT)
    assert refreshes(fake) == 1
    assert fake.fhir_requests == 30


@pytest.mark.anyio
async def test_refresh_does_not_need_offline_access_in_the_granted_scope(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock
) -> None:
    fake.scope_in_response = "launch patient/Patient.read openid fhirUser"  # Epic drops offline_access
    async with session(make_launch, fake) as (client, auth):
        assert "offline_access" not in auth.token_set.scopes
        assert auth.token_set.can_refresh
        clock.advance(3700)
        await client.read("Patient", PATIENT)
    assert refreshes(fake) == 1


@pytest.mark.anyio
async def test_without_a_refresh_token_expiry_asks_for_a_new_launch(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock
) -> None:
    async with session(make_launch, fake, confidential=False) as (client, auth):
        assert not auth.token_set.can_refresh
        clock.advance(3590)  # the last minute: still used, nothing to refresh with
        await client.read("Patient", PATIENT)
        clock.advance(20)
        with pytest.raises(ReauthorizationRequired, match="launch again"):
            await client.read("Patient", PATIENT)
    assert len(fake.token_forms) == 1  # only the code exchange


@pytest.mark.anyio
async def test_a_refused_refresh_token_asks_for_a_new_launch_and_is_not_tried_again(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock
) -> None:
    async with session(make_launch, fake) as (client, auth):
        fake.refresh_tokens.clear()  # expired or revoked at Epic
        clock.advance(3700)
        with pytest.raises(ReauthorizationRequired, match="invalid_grant"):
            await client.read("Patient", PATIENT)
        assert auth.token_set.refresh_token is None
        with pytest.raises(ReauthorizationRequired):
            await client.read("Patient", PATIENT)
    assert refreshes(fake) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_on_refresh_receives_the_new_token_set_with_the_rotated_refresh_token(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock, kind: str
) -> None:
    fake.rotate_refresh = True
    saved: list[dict[str, Any]] = []

    def save(tokens: SmartTokenSet) -> None:
        saved.append(tokens.to_dict())

    async def save_async(tokens: SmartTokenSet) -> None:
        await anyio.lowlevel.checkpoint()
        save(tokens)

    callback = save if kind == "sync" else save_async
    async with session(make_launch, fake, on_refresh=callback) as (client, auth):
        first_refresh = auth.token_set.refresh_token
        for _ in range(2):
            clock.advance(3700)
            await client.read("Patient", PATIENT)
    assert len(saved) == 2
    assert saved[0]["refresh_token"] != first_refresh
    assert saved[1]["refresh_token"] != saved[0]["refresh_token"]  # the second refresh used the rotated one
    assert saved[1]["refresh_token"] == auth.token_set.refresh_token
    assert refreshes(fake) == 2


@pytest.mark.anyio
async def test_a_failing_on_refresh_is_logged_not_raised(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(tokens: SmartTokenSet) -> None:
        raise RuntimeError("session store down")

    async with session(make_launch, fake, on_refresh=broken) as (client, auth):
        clock.advance(3700)
        with caplog.at_level(logging.WARNING, logger="epic_fhir_async.auth"):
            await client.read("Patient", PATIENT)
    assert "on_refresh failed" in caplog.text
    assert auth.token_set.access_token not in caplog.text


@pytest.mark.anyio
async def test_a_restored_token_set_works_in_a_new_process(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock
) -> None:
    async with session(make_launch, fake) as (_, auth):
        saved = auth.token_set.to_dict()
    # "another process": a monotonic clock with another origin, the same wall clock
    mono = FakeClock(start=5.0)
    restored = SmartAuth(SmartTokenSet.from_dict(saved), client_secret="s3cret", clock=mono, wall_clock=clock)
    async with EpicFHIRClient(BASE, auth=restored, transport=httpx.MockTransport(fake.handler)) as client:
        await client.read("Patient", PATIENT)
        assert refreshes(fake) == 0
        clock.advance(3700)
        mono.advance(3700)
        await client.read("Patient", PATIENT)
    assert refreshes(fake) == 1
    assert fake.token_headers[-1]["authorization"].startswith("Basic ")


@pytest.mark.anyio
async def test_tokens_are_never_bound_to_another_server(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    async with session(make_launch, fake) as (_, auth):
        with pytest.raises(ConfigurationError, match="refusing to send them"):
            EpicFHIRClient("https://other.example.org/api/FHIR/R4", auth=auth)
        assert "s3cret" not in repr(auth)
        assert auth.token_set.access_token not in repr(auth)


@pytest.mark.anyio
async def test_a_token_set_of_another_client_is_refused_by_the_launch(
    make_launch: MakeLaunch, fake: FakeSmart
) -> None:
    async with session(make_launch, fake) as (_, auth):
        other = SmartTokenSet.from_dict({**auth.token_set.to_dict(), "client_id": "x"})
    async with make_launch() as launch:
        with pytest.raises(ConfigurationError, match="another client"):
            launch.auth(other)
