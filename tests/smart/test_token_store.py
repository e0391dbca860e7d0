"""The token-set stores, their encryption and the Redis lock, one behaviour at a time.

The Redis tests use a real redis-server on loopback (``redis_url`` in tests/conftest.py) and run on asyncio
only (``redis.asyncio``); the in-memory store and the cipher run on both backends.
"""

from __future__ import annotations

import time

import anyio
import pytest

from epic_fhir_async import ConfigurationError, StoreUnavailable, TokenSetUnreadable
from epic_fhir_async._redis import RedisLock, check_url, connect, get_json, set_json, shown_url
from epic_fhir_async.auth import InMemoryTokenSetStore, RedisTokenSetStore, SmartTokenSet, TokenCipher

from .._processes import free_port

ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", ["asyncio"])


def token_set(*, refresh: bool = True, lifetime: float = 600.0, patient: str = "p-1") -> SmartTokenSet:
    return SmartTokenSet(
        access_token="access-token-value-123",
        expires_at=1_000_000.0 + lifetime,
        issued_at=1_000_000.0,
        client_id="web",
        token_url="https://fhir.example.org/oauth2/token",
        fhir_base="https://fhir.example.org/api/FHIR/R4",
        refresh_token="refresh-token-value-456" if refresh else None,
        patient=patient,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the in-memory store ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_memory_store_saves_loads_and_deletes_by_session_id() -> None:
    store = InMemoryTokenSetStore()
    assert await store.load("a") is None
    first, second = token_set(patient="p-1"), token_set(patient="p-2")
    await store.save("a", first)
    await store.save("b", second)
    assert await store.load("a") is first
    assert await store.load("b") is second
    await store.delete("a")
    await store.delete("a")  # twice is fine
    assert await store.load("a") is None
    assert len(store._entries) == 1


@pytest.mark.anyio
async def test_a_memory_session_expires_ttl_after_its_last_save_and_sooner_without_a_refresh_token() -> None:
    clock = Clock()
    store = InMemoryTokenSetStore(ttl=3600, clock=clock)
    await store.save("refreshable", token_set())
    await store.save("one-shot", token_set(refresh=False, lifetime=600))
    clock.now += 600 + 61  # the one-shot set's access token expired (and its minute of grace)
    assert await store.load("one-shot") is None
    assert await store.load("refreshable") is not None
    await store.save("refreshable", token_set())  # a refresh saves again: the session lives on
    clock.now += 3599
    assert await store.load("refreshable") is not None
    clock.now += 2
    assert await store.load("refreshable") is None


@pytest.mark.anyio
async def test_the_memory_lock_lets_one_holder_in_per_session_and_leaves_nothing_behind() -> None:
    store = InMemoryTokenSetStore()
    inside: list[str] = []
    overlap: list[tuple[str, ...]] = []

    async def hold(session: str, name: str) -> None:
        async with store.lock(session):
            inside.append(name)
            overlap.append(tuple(inside))
            await anyio.sleep(0.01)
            inside.remove(name)

    async with anyio.create_task_group() as tg:
        for name in ("a1", "a2", "a3"):
            tg.start_soon(hold, "a", name)
        tg.start_soon(hold, "b", "b1")
    assert all(sum(n.startswith("a") for n in names) <= 1 for names in overlap)
    assert any(len(names) == 2 for names in overlap)  # another session's lock is not this one
    assert store._locks == {}


def test_a_bad_ttl_is_a_configuration_error() -> None:
    for ttl in (0, -1, float("inf"), True, "60"):
        with pytest.raises(ConfigurationError, match="seconds"):
            InMemoryTokenSetStore(ttl=ttl)  # type: ignore[arg-type]


# -- the cipher -------------------------------------------------------------------------------------------------


def test_the_cipher_round_trips_and_its_output_shows_nothing_of_the_value() -> None:
    cipher = TokenCipher(TokenCipher.generate_key())
    value = {"refresh_token": "refresh-token-value-456", "patient": "p-1"}
    sealed = cipher.encrypt(value)
    assert b"refresh-token-value-456" not in sealed
    assert b"p-1" not in sealed
    assert cipher.decrypt(sealed) == value
    assert cipher.decrypt(sealed.decode()) == value
    assert cipher.encrypt(value) != sealed  # a random IV each time


def test_a_value_from_another_key_or_tampered_does_not_decrypt_and_the_error_shows_nothing() -> None:
    key = TokenCipher.generate_key()
    sealed = TokenCipher(key).encrypt({"refresh_token": "refresh-token-value-456"})
    tampered = sealed[:-3] + (b"A" if sealed[-3:-2] != b"A" else b"B") + sealed[-2:]
    other = TokenCipher(TokenCipher.generate_key())
    for cipher, token in ((other, sealed), (TokenCipher(key), tampered), (other, b"not a token")):
        with pytest.raises(TokenSetUnreadable, match="sign in again") as caught:
            cipher.decrypt(token)
        assert "refresh-token-value" not in str(caught.value)
        assert key not in str(caught.value)
        assert caught.value.__cause__ is None


def test_keys_rotate_new_first_old_still_decrypting() -> None:
    old, new = TokenCipher.generate_key(), TokenCipher.generate_key()
    before = TokenCipher(old).encrypt({"v": 1})
    rotated = TokenCipher([new, old])
    assert rotated.decrypt(before) == {"v": 1}
    after = rotated.encrypt({"v": 2})
    assert TokenCipher(new).decrypt(after) == {"v": 2}
    with pytest.raises(TokenSetUnreadable):
        TokenCipher(old).decrypt(after)


def test_max_age_refuses_an_old_value() -> None:
    cipher = TokenCipher(TokenCipher.generate_key())
    sealed = cipher._fernet.encrypt_at_time(b'{"v":1}', int(time.time()) - 120)
    assert cipher.decrypt(sealed, max_age=300) == {"v": 1}
    with pytest.raises(TokenSetUnreadable, match="pending sign-in"):
        cipher.decrypt(sealed, max_age=60, what="pending sign-in")


def test_a_key_that_is_not_a_fernet_key_is_a_configuration_error_that_does_not_show_it() -> None:
    for keys in ("too-short-secret", b"x" * 44, ["", TokenCipher.generate_key()], []):
        with pytest.raises(ConfigurationError, match="generate_key") as caught:
            TokenCipher(keys)
        assert "too-short-secret" not in str(caught.value)


# -- Redis ------------------------------------------------------------------------------------------------------


def test_redis_urls_are_checked_and_shown_without_password() -> None:
    assert shown_url("redis://user:secret@host:6379/2?x=1") == "redis://host:6379/2"
    assert shown_url("rediss://:secret@host") == "rediss://host"
    for bad in ("http://host:6379", "host:6379", "", 6379):
        with pytest.raises(ConfigurationError, match="redis://"):
            check_url(bad)
    with pytest.raises(ConfigurationError, match="TokenCipher"):
        RedisTokenSetStore("redis://127.0.0.1:1/0", cipher="key")  # type: ignore[arg-type]


@pytest.mark.anyio
@ASYNCIO_ONLY
async def test_the_redis_store_round_trips_and_deletes(redis_db: str) -> None:
    store = RedisTokenSetStore(redis_db, cipher=TokenCipher(TokenCipher.generate_key()))
    try:
        await store.check()
        assert await store.load("s1") is None
        await store.save("s1", token_set(patient="p-9"))
        loaded = await store.load("s1")
        assert loaded is not None
        assert (loaded.patient, loaded.refresh_token) == ("p-9", "refresh-token-value-456")
        await store.delete("s1")
        assert await store.load("s1") is None
    finally:
        await store.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_redis_on_trio_is_a_configuration_error_saying_asyncio(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="asyncio only"):
        RedisTokenSetStore(redis_url, cipher=TokenCipher(TokenCipher.generate_key()))


@pytest.mark.anyio
@ASYNCIO_ONLY
async def test_json_values_live_for_their_ttl(redis_db: str) -> None:
    client = await connect(redis_db, deadline=5)
    try:
        await set_json(client, "k", {"a": [1, 2]}, ttl=0.2)
        await set_json(client, "forever", "x", ttl=None)
        assert await get_json(client, "k") == {"a": [1, 2]}
        await anyio.sleep(0.3)
        assert await get_json(client, "k") is None
        assert await get_json(client, "forever") == "x"
        assert await client.pttl("forever") == -1
    finally:
        await client.aclose()


@pytest.mark.anyio
@ASYNCIO_ONLY
async def test_connecting_to_nothing_fails_within_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="did not answer"):
        await connect(f"redis://:pw@127.0.0.1:{free_port()}/0", deadline=1)
    assert time.monotonic() - started < 3


@pytest.mark.anyio
@ASYNCIO_ONLY
async def test_the_redis_lock_excludes_and_a_dead_holders_lock_expires(redis_db: str) -> None:
    client = await connect(redis_db)
    try:
        dead = RedisLock(client, "lock", ttl=0.5)
        await dead.acquire()  # a worker that took the lock and was killed: never released
        started = time.monotonic()
        async with RedisLock(client, "lock", ttl=5):
            waited = time.monotonic() - started
        assert 0.3 < waited < 2.0

        inside: list[int] = []
        most = 0

        async def hold() -> None:
            nonlocal most
            async with RedisLock(client, "lock", ttl=5):
                inside.append(1)
                most = max(most, len(inside))
                await anyio.sleep(0.02)
                inside.pop()

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(hold)
        assert most == 1
        assert await client.exists("lock") == 0  # released by its holders

        await dead.release()  # the expired lock was someone else's since: not deleted by its old holder
        holder = RedisLock(client, "lock", ttl=5)
        await holder.acquire()
        stale = RedisLock(client, "lock", ttl=5)
        stale._token = dead._token
        stale.held = True
        await stale.release()
        assert await client.exists("lock") == 1
        await holder.release()
    finally:
        await client.aclose()


@pytest.mark.anyio
@ASYNCIO_ONLY
async def test_a_lock_held_too_long_is_a_clear_error(redis_db: str) -> None:
    client = await connect(redis_db)
    try:
        async with RedisLock(client, "busy", ttl=30):
            with pytest.raises(StoreUnavailable, match=r"still held after 0\.3 s"):
                await RedisLock(client, "busy", ttl=30, wait=0.3).acquire()
    finally:
        await client.aclose()
