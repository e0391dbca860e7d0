"""SmartSessions over a token-set store: sign-in, per-request auth, and one refresh per user across workers.

A "worker" here is what each uvicorn worker process of a web app holds: its own EpicFHIRClient, SmartLaunch
and SmartSessions, sharing only the store (a real redis-server on loopback, or one in-memory store). The
sandbox runs in-process; its clock is also the SDK's, so tokens expire when the test moves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import httpx
import pytest

from epic_fhir_async import (
    EpicFHIRClient,
    LaunchStateError,
    ReauthorizationRequired,
    SmartLaunch,
    StoreUnavailable,
    TokenSetUnreadable,
)
from epic_fhir_async.auth import (
    InMemoryTokenSetStore,
    RedisTokenSetStore,
    SmartSessions,
    TokenCipher,
    TokenSetStore,
)
from epic_fhir_async.sandbox import EpicSandbox, SandboxClock

from .._processes import free_port

NOW = 1_780_000_000.0
REDIRECT = "https://app.example.org/callback"
SCOPES = "openid fhirUser launch/patient patient/Patient.read offline_access"
SECRET = "web-app-secret-value"
KEY = TokenCipher.generate_key()
LIFETIME = 600


@pytest.fixture(
    params=[("memory", "asyncio"), ("memory", "trio"), ("redis", "asyncio")],
    ids=["memory-asyncio", "memory-trio", "redis-asyncio"],
)
def kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def anyio_backend(kind: tuple[str, str]) -> str:
    return kind[1]  # redis.asyncio runs on asyncio only


@pytest.fixture
def sb() -> EpicSandbox:
    sandbox = EpicSandbox(seed=0, patients=4, clock=SandboxClock(frozen_at=NOW), token_lifetime=LIFETIME)
    # Rolling persistent access: every refresh rotates the refresh token, so two refreshes racing for one
    # user would leave one worker with a dead refresh token.
    sandbox.register_app(
        "web", redirect_uris=[REDIRECT], client_secret=SECRET, persistent_access=True, refresh_lifetime=86_400
    )
    return sandbox


@pytest.fixture
def store_url(kind: tuple[str, str], request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("redis_db") if kind[0] == "redis" else None


@asynccontextmanager
async def shared_store(url: str | None, cipher: TokenCipher) -> AsyncIterator[TokenSetStore]:
    if url is None:
        yield InMemoryTokenSetStore()
        return
    store = RedisTokenSetStore(url, cipher=cipher, lock_ttl=5)
    try:
        yield store
    finally:
        await store.aclose()


@dataclass
class Worker:
    sb: EpicSandbox
    client: EpicFHIRClient
    sessions: SmartSessions

    async def sign_in(self, patient: str) -> str:
        """An EHR launch for ``patient`` (Epic's authorize answers 302 at once): the new session id."""
        pending = await self.sessions.begin(launch=self.sb.mint_launch(patient), iss=self.sb.base_url)
        async with httpx.AsyncClient(transport=self.sb.transport()) as browser:
            redirect = await browser.get(pending.url)
        assert redirect.status_code == 302, redirect.text
        session_id, tokens = await self.sessions.complete(pending.cookie, redirect.headers["location"])
        assert tokens.patient == patient
        return session_id

    async def patient_of(self, session_id: str) -> str:
        """What one request of the user does: its auth from the store, a view of the client, a read."""
        auth = await self.sessions.auth(session_id)
        assert auth.token_set.patient is not None
        async with self.client.with_auth(auth) as fhir:
            patient = await fhir.read("Patient", auth.token_set.patient)
        return str(patient["id"])


@asynccontextmanager
async def worker(sb: EpicSandbox, store: TokenSetStore, cipher: TokenCipher) -> AsyncIterator[Worker]:
    async with EpicFHIRClient(sb.base_url, transport=sb.transport()) as client:
        launch = SmartLaunch(
            sb.base_url,
            client_id="web",
            redirect_uri=REDIRECT,
            scopes=SCOPES,
            client_secret=SECRET,
            http_client=client.http,
            clock=sb.clock.now,
            wall_clock=sb.clock.now,
        )
        yield Worker(sb, client, SmartSessions(launch, store, cipher=cipher))


@asynccontextmanager
async def two_workers(sb: EpicSandbox, url: str | None) -> AsyncIterator[tuple[Worker, Worker]]:
    cipher = TokenCipher(KEY)
    async with shared_store(url, cipher) as store_a, shared_store(url, cipher) as store_b:
        # With Redis each worker has its own connection, as separate processes would; in memory they share one.
        second = store_b if url is not None else store_a
        async with worker(sb, store_a, cipher) as a, worker(sb, second, cipher) as b:
            yield a, b


def patients(sb: EpicSandbox, count: int) -> list[str]:
    return sb.dataset.patient_ids[:count]


# -- across workers -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_session_signed_in_on_one_worker_works_on_the_other(
    sb: EpicSandbox, store_url: str | None
) -> None:
    async with two_workers(sb, store_url) as (a, b):
        first, second = patients(sb, 2)
        alice, bob = await a.sign_in(first), await b.sign_in(second)
        assert [await b.patient_of(alice), await a.patient_of(bob)] == [first, second]
        assert await a.patient_of(alice) == first
    assert sb.stats["code_exchanges"] == 2
    assert sb.stats["refresh_exchanges"] == 0


@pytest.mark.anyio
async def test_requests_on_two_workers_while_the_token_expires_make_one_refresh_grant(
    sb: EpicSandbox, store_url: str | None
) -> None:
    async with two_workers(sb, store_url) as (a, b):
        (pid,) = patients(sb, 1)
        session = await a.sign_in(pid)
        for expiry in (1, 2):
            sb.clock.advance(LIFETIME + 1)  # expired on the sandbox's clock and the SDK's
            seen: list[str] = []

            async def request(w: Worker) -> None:
                seen.append(await w.patient_of(session))  # noqa: B023 - awaited inside this iteration

            async with anyio.create_task_group() as tg:
                for w in (a, b, a, b, a, b):
                    tg.start_soon(request, w)
            assert seen == [pid] * 6
            # One grant per expiry: a second one would have used a rotated (dead) refresh token.
            assert sb.stats["refresh_exchanges"] == expiry
            assert sb.stats["token_failures:unknown_refresh_token"] == 0
    assert sb.stats["bearer_failures"] == 0  # refreshed before use, never after a 401


@pytest.mark.anyio
async def test_a_refused_refresh_asks_the_user_to_sign_in_again_on_every_worker(
    sb: EpicSandbox, store_url: str | None
) -> None:
    sb.register_app(
        "web", redirect_uris=[REDIRECT], client_secret=SECRET, persistent_access=True, refresh_lifetime=900
    )
    async with two_workers(sb, store_url) as (a, b):
        (pid,) = patients(sb, 1)
        session = await a.sign_in(pid)
        sb.clock.advance(1000)  # the access token and the refresh token have both expired
        outcomes: list[BaseException] = []

        async def request(w: Worker) -> None:
            try:
                await w.patient_of(session)
            except ReauthorizationRequired as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for w in (a, b, a, b):
                tg.start_soon(request, w)
        assert len(outcomes) == 4
        assert sb.stats["token_failures:expired_refresh_token"] == 1  # refused once, not once per request
        for w in (a, b):
            with pytest.raises(ReauthorizationRequired, match="sign in again"):
                await w.sessions.auth(session)  # the session is gone from the store
        assert await a.sessions.store.load(session) is None


@pytest.mark.anyio
async def test_signing_in_again_ends_the_previous_session(sb: EpicSandbox, store_url: str | None) -> None:
    async with two_workers(sb, store_url) as (a, _):
        (pid,) = patients(sb, 1)
        old = await a.sign_in(pid)
        pending = await a.sessions.begin()
        async with httpx.AsyncClient(transport=sb.transport()) as browser:
            redirect = await browser.get(pending.url)
        new, _ = await a.sessions.complete(pending.cookie, redirect.headers["location"], previous_session=old)
        assert new != old
        assert len(new) == 43
        with pytest.raises(ReauthorizationRequired):
            await a.sessions.auth(old)
        assert await a.patient_of(new)


# -- bad input ------------------------------------------------------------------------------------------------


class CountingStore(InMemoryTokenSetStore):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def load(self, session_id: str):  # type: ignore[no-untyped-def]
        self.loads += 1
        return await super().load(session_id)


MEMORY_ONLY = pytest.mark.parametrize(
    "kind", [("memory", "asyncio"), ("memory", "trio")], ids=["memory-asyncio", "memory-trio"]
)
REDIS_ONLY = pytest.mark.parametrize("kind", [("redis", "asyncio")], ids=["redis-asyncio"])


@pytest.mark.anyio
@MEMORY_ONLY
async def test_a_forged_or_unknown_session_cookie_asks_to_sign_in_without_asking_the_store(
    sb: EpicSandbox,
) -> None:
    store = CountingStore()
    async with worker(sb, store, TokenCipher(KEY)) as w:
        for cookie in (None, "", "x" * 42, "../../etc/passwd" + "a" * 27, "a" * 43 + "\n", "ä" * 43):
            with pytest.raises(ReauthorizationRequired):
                await w.sessions.auth(cookie)
        assert store.loads == 0
        with pytest.raises(ReauthorizationRequired, match="unknown or has ended"):
            await w.sessions.auth("A" * 43)  # the right shape, but no such session
        assert store.loads == 1
    assert sb.stats["fhir_requests"] == 0


@pytest.mark.anyio
@MEMORY_ONLY
async def test_a_tampered_or_foreign_sign_in_cookie_is_refused_before_any_token_request(
    sb: EpicSandbox,
) -> None:
    async with worker(sb, InMemoryTokenSetStore(), TokenCipher(KEY)) as w:
        pending = await w.sessions.begin(launch=sb.mint_launch(patients(sb, 1)[0]), iss=sb.base_url)
        async with httpx.AsyncClient(transport=sb.transport()) as browser:
            callback = (await browser.get(pending.url)).headers["location"]
        flipped = pending.cookie[:-5] + ("A" if pending.cookie[-5] != "A" else "B") + pending.cookie[-4:]
        other_key = TokenCipher(TokenCipher.generate_key()).encrypt({"format": 1})
        for cookie in (None, "", flipped, "garbage", other_key.decode()):
            with pytest.raises(LaunchStateError, match="start again") as caught:
                await w.sessions.complete(cookie, callback)
            assert "code=" not in str(caught.value)
        assert sb.stats["token_requests"] == 0
        session, _ = await w.sessions.complete(pending.cookie, callback)  # the real one still works
        assert await w.patient_of(session)


@pytest.mark.anyio
@REDIS_ONLY
async def test_a_store_that_is_down_is_a_clear_error_naming_it_without_its_password() -> None:
    dead = f"redis://user:hunter2-password@127.0.0.1:{free_port()}/0"
    store = RedisTokenSetStore(dead, cipher=TokenCipher(KEY), timeout=1.0)
    try:
        with anyio.fail_after(10):
            for call in (store.check(), store.load("A" * 43), store.delete("A" * 43)):
                with pytest.raises(StoreUnavailable) as caught:
                    await call
                text = str(caught.value)
                assert "hunter2" not in text
                assert "user" not in text
                assert f"redis://127.0.0.1:{dead.rsplit(':', 1)[1]}" in text
                assert caught.value.__cause__ is None
    finally:
        await store.aclose()


@pytest.mark.anyio
@REDIS_ONLY
async def test_sessions_on_a_store_that_went_down_fail_clearly_and_survive_its_return(
    sb: EpicSandbox, redis_db: str
) -> None:
    cipher = TokenCipher(KEY)
    async with shared_store(redis_db, cipher) as store, worker(sb, store, cipher) as w:
        (pid,) = patients(sb, 1)
        session = await w.sign_in(pid)
        down = RedisTokenSetStore(f"redis://127.0.0.1:{free_port()}/0", cipher=cipher, timeout=1.0)
        try:
            w.sessions.store = down
            with pytest.raises(StoreUnavailable, match="did not answer"):
                await w.patient_of(session)
        finally:
            await down.aclose()
        w.sessions.store = store
        assert await w.patient_of(session) == pid


@pytest.mark.anyio
@REDIS_ONLY
async def test_a_wrong_encryption_key_asks_to_sign_in_again_and_shows_nothing(
    sb: EpicSandbox, redis_db: str
) -> None:
    right = TokenCipher(KEY)
    async with shared_store(redis_db, right) as store, worker(sb, store, right) as w:
        (pid,) = patients(sb, 1)
        session = await w.sign_in(pid)
        saved = await store.load(session)
        assert saved is not None
        wrong = RedisTokenSetStore(redis_db, cipher=TokenCipher(TokenCipher.generate_key()))
        try:
            w.sessions.store = wrong
            with pytest.raises(TokenSetUnreadable, match="sign in again") as caught:
                await w.patient_of(session)
        finally:
            await wrong.aclose()
        assert isinstance(caught.value, ReauthorizationRequired)
        text = f"{caught.value} {caught.value!r}"
        assert saved.access_token not in text
        assert saved.refresh_token is not None
        assert saved.refresh_token not in text
        assert KEY not in text
        assert caught.value.__cause__ is None
        assert caught.value.__context__ is None or "InvalidToken" in type(caught.value.__context__).__name__


# -- what is stored -------------------------------------------------------------------------------------------


@pytest.mark.anyio
@REDIS_ONLY
async def test_redis_holds_the_token_set_encrypted_under_a_hash_of_the_session_id(
    sb: EpicSandbox, redis_db: str
) -> None:
    import redis.asyncio

    cipher = TokenCipher(KEY)
    async with shared_store(redis_db, cipher) as store, worker(sb, store, cipher) as w:
        (pid,) = patients(sb, 1)
        session = await w.sign_in(pid)
        tokens = await store.load(session)
        assert tokens is not None
        assert tokens.refresh_token is not None
        raw = redis.asyncio.Redis.from_url(redis_db)
        try:
            (name,) = await raw.keys("*")
            key = name.decode() if isinstance(name, bytes) else str(name)
            value = await raw.get(key)
            ttl = await raw.pttl(key)
        finally:
            await raw.aclose()
    assert isinstance(value, bytes)
    assert session not in key
    assert key.startswith("epic-fhir:smart-session:")
    for secret in (tokens.access_token, tokens.refresh_token, pid, "web"):
        assert secret.encode() not in value
    assert 0 < ttl <= 12 * 3600 * 1000


def test_nothing_secret_is_in_reprs() -> None:
    cipher = TokenCipher([KEY, TokenCipher.generate_key()])
    assert repr(cipher) == "TokenCipher(keys=2)"
    store = RedisTokenSetStore("redis://:pa55word@127.0.0.1:1/0", cipher=cipher)
    assert "pa55word" not in repr(store)
    assert KEY not in repr(cipher) + repr(store)
