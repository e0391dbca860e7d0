"""The fleet's shared state on a real redis-server: the token cache (one fetch for many token managers, each
with its own Redis connection as on separate workers) and the rate budget (pacing and the 429 pause)."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from epic_fhir_async.auth import AccessToken, TokenCacheKey, TokenManager
from epic_fhir_async.fleet import RedisTokenCache, SharedBudget

from .._processes import free_port

KEY = TokenCacheKey("https://fhir.example.org/oauth2/token", "client-a", "")


@pytest.fixture
async def connections(redis_db: str) -> AsyncIterator[list[aioredis.Redis]]:
    """Three separate connections to one database, as three workers would have."""
    clients = [aioredis.from_url(redis_db) for _ in range(3)]
    await clients[0].flushdb()
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


def make_token(value: str, lifetime: float = 60.0) -> AccessToken:
    now = time.monotonic()
    return AccessToken(
        value=value, expires_at=now + lifetime, issued_at=now, expires_at_wall=time.time() + lifetime
    )


class Provider:
    def __init__(self, delay: float = 0.05, lifetime: float = 60.0) -> None:
        self.calls = 0
        self.delay = delay
        self.lifetime = lifetime

    async def __call__(self) -> AccessToken:
        self.calls += 1
        await anyio.sleep(self.delay)  # the token request's round trip: others arrive meanwhile
        return make_token(f"token-{self.calls}", self.lifetime)


@pytest.mark.anyio
async def test_many_managers_on_separate_connections_make_one_token_request(
    connections: list[aioredis.Redis],
) -> None:
    provider = Provider()
    managers = [
        TokenManager(provider, cache=RedisTokenCache(c, lock_ttl=5), cache_key=KEY) for c in connections
    ]
    got: list[str] = []

    async def ask(manager: TokenManager) -> None:
        got.append((await manager.get()).value)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            for manager in managers:
                tg.start_soon(ask, manager)

    assert provider.calls == 1
    assert set(got) == {"token-1"}
    assert len(got) == 30


@pytest.mark.anyio
async def test_a_token_stored_between_a_workers_read_and_its_lock_is_not_fetched_again(
    connections: list[aioredis.Redis],
) -> None:
    holder = RedisTokenCache(connections[0])
    assert await holder.get(KEY) is None  # the holder has the lock and fetches

    class StoresRightAfterTheFirstRead(RedisTokenCache):
        reads = 0

        async def _read(self, entry: str) -> AccessToken | None:
            token = await super()._read(entry)
            self.reads += 1
            if self.reads == 1:  # the holder stores its token and releases the lock at the worst moment
                await holder.set(KEY, make_token("token-1"))
            return token

    latecomer = StoresRightAfterTheFirstRead(connections[1])
    token = await latecomer.get(KEY)

    assert token is not None  # None would tell its manager to ask the token endpoint a second time
    assert token.value == "token-1"
    _entry, lock = latecomer._keys(KEY)
    assert await connections[2].get(lock) is None  # the lock it took to look again is released


@pytest.mark.anyio
async def test_a_due_token_is_refreshed_once_for_every_manager(connections: list[aioredis.Redis]) -> None:
    provider = Provider(lifetime=1.0)  # refreshed 0.1 s before it expires
    managers = [TokenManager(provider, cache=RedisTokenCache(c), cache_key=KEY) for c in connections]
    for manager in managers:
        await manager.get()
    await anyio.sleep(0.95)
    values: list[str] = []

    async def ask(manager: TokenManager) -> None:
        values.append((await manager.get()).value)

    async with anyio.create_task_group() as tg:
        for manager in managers:
            tg.start_soon(ask, manager)

    assert provider.calls == 2
    assert values == ["token-2"] * 3


@pytest.mark.anyio
async def test_a_token_refused_on_every_worker_is_replaced_by_one_token_request(
    connections: list[aioredis.Redis],
) -> None:
    provider = Provider()
    managers = [TokenManager(provider, cache=RedisTokenCache(c), cache_key=KEY) for c in connections]
    held = [await manager.get() for manager in managers]
    assert provider.calls == 1
    assert {token.value for token in held} == {"token-1"}

    async def refused(manager: TokenManager, token: AccessToken) -> None:
        manager.invalidate(token)  # what the auth flow does on a 401
        await manager.get()

    # The server revoked the token: each worker's next request gets a 401. Each manager drops the shared entry
    # that still holds it, so the first takes the refresh lock and the others wait for its token; a refused
    # entry left in Redis would make every worker fetch its own (it is fresh there, and no lock is taken).
    async with anyio.create_task_group() as tg:
        for manager, token in zip(managers[:2], held[:2], strict=True):
            tg.start_soon(refused, manager, token)
    assert provider.calls == 2
    assert [(m.current.value if m.current else None) for m in managers[:2]] == ["token-2"] * 2

    # A late 401 of the replaced token (the third worker still held it) leaves the replacement in Redis.
    await refused(managers[2], held[2])
    assert provider.calls == 2
    current = managers[2].current
    assert current is not None
    assert current.value == "token-2"
    stored = await RedisTokenCache(connections[0]).get(KEY)
    assert stored is not None
    assert stored.value == "token-2"


@pytest.mark.anyio
async def test_delete_with_a_token_compares_values_not_objects(connections: list[aioredis.Redis]) -> None:
    writer, other = RedisTokenCache(connections[0]), RedisTokenCache(connections[1])
    await writer.set(KEY, make_token("stored-token"))
    await other.delete(KEY, make_token("some-other-token"))
    assert await RedisTokenCache(connections[2]).get(KEY) is not None  # another token's 401 leaves this one
    await other.delete(KEY, make_token("stored-token"))  # a token of another worker: an equal value
    entry, _lock = writer._keys(KEY)
    assert await connections[2].get(entry) is None


@pytest.mark.anyio
async def test_a_lock_left_by_a_dead_worker_expires(connections: list[aioredis.Redis]) -> None:
    cache = RedisTokenCache(connections[0], lock_ttl=0.5)
    _entry, lock = cache._keys(KEY)
    await connections[1].set(lock, "a-worker-that-died", px=400)
    started = time.monotonic()

    assert await cache.get(KEY) is None  # nothing stored, and the lock is ours now: fetch

    assert 0.3 <= time.monotonic() - started < 2.0
    assert await connections[1].get(lock) == cache._owner.encode()


@pytest.mark.anyio
async def test_a_token_read_from_redis_expires_when_the_writers_does(
    connections: list[aioredis.Redis],
) -> None:
    writer, reader = RedisTokenCache(connections[0]), RedisTokenCache(connections[1])
    await writer.set(KEY, make_token("shared", lifetime=30.0))
    token = await reader.get(KEY)
    assert token is not None
    assert token.value == "shared"
    assert 29.0 < token.expires_at - time.monotonic() <= 30.0
    assert token.lifetime == pytest.approx(30.0)
    assert "shared" not in repr(token)


@pytest.mark.anyio
async def test_without_redis_the_cache_warns_and_lets_each_worker_fetch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.5)
    provider = Provider(delay=0)
    manager = TokenManager(provider, cache=RedisTokenCache(dead), cache_key=KEY)
    with caplog.at_level(logging.WARNING, logger="epic_fhir_async.fleet"):
        token = await manager.get()
    await dead.aclose()
    assert token.value == "token-1"
    assert provider.calls == 1
    assert "could not read the shared token in Redis (ConnectionError)" in caplog.text


async def reserve(budget: SharedBudget) -> float:
    """When (``time.monotonic()``) the request that reserved a slot now may go."""
    wait = await budget.acquire()
    return time.monotonic() + wait


@pytest.mark.anyio
async def test_the_budget_paces_every_worker_together(connections: list[aioredis.Redis]) -> None:
    budgets = [
        SharedBudget(c, origin="https://fhir.example.org", client_id="client-a", requests_per_second=50)
        for c in connections
    ]
    slots = [await reserve(budgets[i % 3]) for i in range(20)]
    # One slot every 20 ms whichever worker asks: the n-th request goes n slots after the first, however
    # long each reservation took to reach Redis (a loaded machine slows the calls, not the slots).
    assert slots[-1] - slots[0] == pytest.approx(19 / 50, abs=0.01)
    assert all(b - a == pytest.approx(1 / 50, abs=0.005) for a, b in itertools.pairwise(slots))


@pytest.mark.anyio
async def test_a_burst_goes_at_once_then_the_rate_holds(connections: list[aioredis.Redis]) -> None:
    budget = SharedBudget(
        connections[0], origin="https://x.example", client_id="b", requests_per_second=10, burst=5
    )
    started = time.monotonic()
    slots = [await reserve(budget) - started for _ in range(7)]
    burst_took = time.monotonic() - started  # the reservations themselves, on a loaded machine
    assert max(slots[:5]) <= burst_took  # five go at once: no wait beyond the calls' own time
    assert slots[5] == pytest.approx(0.1, abs=0.01 + burst_took)
    assert slots[6] - slots[5] == pytest.approx(0.1, abs=0.01)


@pytest.mark.anyio
async def test_a_pause_holds_every_worker_and_the_longer_one_wins(connections: list[aioredis.Redis]) -> None:
    one, two = (
        SharedBudget(c, origin="https://fhir.example.org", client_id="client-a", requests_per_second=None)
        for c in connections[:2]
    )
    assert await two.acquire() == 0.0  # no budget: only the pause
    await one.pause(1.0)
    await two.pause(0.2)  # a shorter Retry-After does not cut the pause short
    assert 0.9 < await two.acquire() <= 1.0
    other = SharedBudget(
        connections[2], origin="https://fhir.example.org", client_id="client-b", requests_per_second=None
    )
    assert await other.acquire() == 0.0  # another client id has a budget of its own
