"""TokenManager: lazy, single-flight, adaptive proactive refresh, and invalidate that only drops the current token."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from epic_fhir_async import TokenRequestError
from epic_fhir_async.auth import AccessToken, InMemoryTokenCache, TokenCacheKey, TokenManager
from epic_fhir_async.auth._token_manager import refresh_margin

if TYPE_CHECKING:
    from tests.auth.conftest import FakeClock

pytestmark = pytest.mark.anyio


class Provider:
    """Counts calls; every call waits a little so concurrent callers really overlap."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600.0, delay: float = 0.01) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.delay = delay
        self.calls = 0
        self.fail: Exception | None = None

    async def __call__(self) -> AccessToken:
        self.calls += 1
        now = self.clock()
        await anyio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return AccessToken(f"token-{self.calls}", expires_at=now + self.lifetime, issued_at=now)


async def test_get_is_lazy_and_reuses_a_fresh_token(clock: FakeClock) -> None:
    provider = Provider(clock)
    manager = TokenManager(provider, clock=clock)
    assert provider.calls == 0
    first = await manager.get()
    clock.advance(3000)
    assert await manager.get() is first
    assert provider.calls == 1
    assert manager.fetches == 1


async def test_five_hundred_concurrent_gets_make_one_request(clock: FakeClock) -> None:
    provider = Provider(clock, delay=0.05)
    manager = TokenManager(provider, clock=clock)
    got: list[AccessToken] = []

    async def one() -> None:
        got.append(await manager.get())

    async with anyio.create_task_group() as tg:
        for _ in range(500):
            tg.start_soon(one)
    assert provider.calls == 1
    assert len(got) == 500
    assert all(t is got[0] for t in got)


async def test_one_request_per_expiry_across_bursts(clock: FakeClock) -> None:
    provider = Provider(clock, lifetime=3.0)
    manager = TokenManager(provider, clock=clock)
    for burst in range(3):
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(manager.get)
        assert provider.calls == burst + 1
        clock.advance(3.0)


@pytest.mark.parametrize(
    ("lifetime", "leeway", "margin"), [(3600, 60, 60), (3, 60, 0.3), (100, 5, 5), (0, 60, 60)]
)
def test_refresh_margin_adapts_to_the_lifetime(lifetime: float, leeway: float, margin: float) -> None:
    assert refresh_margin(lifetime, leeway) == pytest.approx(margin)


async def test_short_token_is_not_refreshed_on_every_request(clock: FakeClock) -> None:
    provider = Provider(clock, lifetime=3.0)
    manager = TokenManager(provider, clock=clock, leeway=60)
    first = await manager.get()
    clock.advance(2.6)  # margin is 0.3 s: still fresh
    assert await manager.get() is first
    clock.advance(0.15)  # 2.75 s: inside the margin, refresh before expiry
    second = await manager.get()
    assert second is not first
    assert provider.calls == 2


async def test_hour_long_token_is_refreshed_a_leeway_early(clock: FakeClock) -> None:
    provider = Provider(clock, lifetime=3600.0)
    manager = TokenManager(provider, clock=clock, leeway=60)
    first = await manager.get()
    clock.advance(3539)
    assert await manager.get() is first
    clock.advance(2)
    assert await manager.get() is not first


async def test_fifty_401s_on_the_same_token_cause_one_refresh(clock: FakeClock) -> None:
    provider = Provider(clock)
    manager = TokenManager(provider, clock=clock)
    old = await manager.get()
    results: list[AccessToken] = []

    async def saw_401() -> None:
        manager.invalidate(old)
        results.append(await manager.get())

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(saw_401)
    assert provider.calls == 2
    assert {t.value for t in results} == {"token-2"}


async def test_invalidate_ignores_a_token_that_is_no_longer_current(clock: FakeClock) -> None:
    provider = Provider(clock)
    manager = TokenManager(provider, clock=clock)
    old = await manager.get()
    assert manager.invalidate(old) is True
    new = await manager.get()
    assert manager.invalidate(old) is False
    assert manager.current is new
    assert manager.invalidate() is True
    assert manager.current is None


async def test_provider_error_propagates_when_there_is_no_token(clock: FakeClock) -> None:
    provider = Provider(clock)
    provider.fail = TokenRequestError("nope", error="invalid_client")
    manager = TokenManager(provider, clock=clock)
    with pytest.raises(TokenRequestError):
        await manager.get()
    provider.fail = None
    assert (await manager.get()).value == "token-2"


async def test_failed_proactive_refresh_keeps_the_valid_token_and_backs_off(clock: FakeClock) -> None:
    provider = Provider(clock, lifetime=3600.0)
    manager = TokenManager(provider, clock=clock)
    first = await manager.get()
    clock.advance(3550)  # inside the 60 s margin, 50 s left
    provider.fail = TokenRequestError("flaky")
    assert await manager.get() is first
    assert await manager.get() is first  # backing off: no second attempt at once
    assert provider.calls == 2
    clock.advance(51)  # expired: the error surfaces
    with pytest.raises(TokenRequestError):
        await manager.get()


async def test_a_shared_cache_serves_a_second_manager(clock: FakeClock) -> None:
    cache = InMemoryTokenCache()
    key = TokenCacheKey("https://x/token", "client", "")
    p1, p2 = Provider(clock), Provider(clock)
    m1 = TokenManager(p1, clock=clock, cache=cache, cache_key=key)
    m2 = TokenManager(p2, clock=clock, cache=cache, cache_key=key)
    token = await m1.get()
    assert await m2.get() is token
    assert (p1.calls, p2.calls) == (1, 0)
    # A token rejected with a 401 is not picked up from the cache again.
    m2.invalidate(token)
    replacement = await m2.get()
    assert replacement is not token
    assert p2.calls == 1
    assert len(cache) == 1


async def test_different_cache_keys_do_not_share(clock: FakeClock) -> None:
    cache = InMemoryTokenCache()
    p1, p2 = Provider(clock), Provider(clock)
    m1 = TokenManager(p1, clock=clock, cache=cache, cache_key=TokenCacheKey("u", "a", ""))
    m2 = TokenManager(p2, clock=clock, cache=cache, cache_key=TokenCacheKey("u", "a", "system/Patient.read"))
    await m1.get()
    await m2.get()
    assert (p1.calls, p2.calls) == (1, 1)


async def test_set_installs_an_external_token(clock: FakeClock) -> None:
    provider = Provider(clock)
    manager = TokenManager(provider, clock=clock)
    token = AccessToken("from-launch", expires_at=clock() + 100, issued_at=clock())
    manager.set(token)
    assert await manager.get() is token
    assert provider.calls == 0
    assert "from-launch" not in repr(manager)


def test_negative_leeway_is_rejected() -> None:
    with pytest.raises(ValueError):
        TokenManager(Provider(lambda: 0.0), leeway=-1)  # type: ignore[arg-type]
