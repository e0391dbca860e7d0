"""TokenManager: a failed fetch fails its whole round (its waiters do not fetch again), a later call retries,
and a task cancelled while it waited never starts a token request."""

from __future__ import annotations

import anyio
import pytest

from epic_fhir_async import EpicFHIRError, TokenRequestError, TransportError
from epic_fhir_async.auth import AccessToken, TokenCacheKey, TokenManager
from epic_fhir_async.auth._token_manager import is_token_failure

pytestmark = pytest.mark.anyio


class GatedProvider:
    """Counts calls; each call waits for ``gate``, then raises ``fail`` or returns a token."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls = 0
        self.fail = fail
        self.gate = anyio.Event()

    async def __call__(self) -> AccessToken:
        self.calls += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return AccessToken(f"token-{self.calls}", expires_at=anyio.current_time() + 3600.0)


async def gather_errors(manager: TokenManager, gate: anyio.Event, n: int) -> list[BaseException]:
    """``n`` concurrent ``get()``s, released together once all of them wait; the errors they raised."""
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await manager.get()
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()  # one in the provider, the others waiting for the lock
        gate.set()
    return errors


async def test_waiters_of_a_failed_fetch_get_its_error_without_fetching() -> None:
    original = TokenRequestError("token request failed: HTTP 400 invalid_client", error="invalid_client")
    provider = GatedProvider(fail=original)
    manager = TokenManager(provider, clock=anyio.current_time)
    errors = await gather_errors(manager, provider.gate, 50)
    assert provider.calls == 1  # not 50, one after the other
    assert manager.fetches == 1
    assert len(errors) == 50
    assert all(isinstance(e, TokenRequestError) and e.error == "invalid_client" for e in errors)
    copies = [e for e in errors if e is not original]
    assert len(copies) == 49  # fresh instances: one object raised in many tasks would pile up tracebacks
    assert all(e.__cause__ is original for e in copies)
    assert all(is_token_failure(e) for e in errors)


async def test_a_call_after_the_failed_round_tries_again() -> None:
    provider = GatedProvider(fail=TokenRequestError("down"))
    provider.gate.set()
    manager = TokenManager(provider, clock=anyio.current_time)
    with pytest.raises(TokenRequestError):
        await manager.get()
    provider.fail = None  # the endpoint recovered: nothing is remembered past the round
    assert (await manager.get()).value == "token-2"
    assert provider.calls == 2


async def test_a_failing_discovery_is_shared_too() -> None:
    """The cache key source runs SMART discovery for grants without a token_url: its failure fails the round."""
    provider = GatedProvider()
    gate = anyio.Event()
    discoveries = 0

    async def discover() -> TokenCacheKey:
        nonlocal discoveries
        discoveries += 1
        await gate.wait()
        raise TransportError("discovery request to https://fhir.example/.well-known failed: ConnectError")

    manager = TokenManager(provider, clock=anyio.current_time, cache_key=discover)
    errors = await gather_errors(manager, gate, 20)
    assert (discoveries, provider.calls) == (1, 0)
    assert len(errors) == 20
    assert all(isinstance(e, TransportError) and is_token_failure(e) for e in errors)


class _Uncopyable(EpicFHIRError):
    """An error ``copy.copy`` refuses, whatever else the process installed (Dask's tblib makes exceptions with
    keyword-only constructors copyable, so NotFound is no longer a reliable example once it is imported)."""

    def __copy__(self) -> _Uncopyable:
        raise TypeError("this error cannot be copied")


async def test_an_error_that_cannot_be_copied_is_shared_as_it_is() -> None:
    odd = _Uncopyable("no such endpoint")
    provider = GatedProvider(fail=odd)
    manager = TokenManager(provider, clock=anyio.current_time)
    errors = await gather_errors(manager, provider.gate, 5)
    assert provider.calls == 1
    assert all(e is odd for e in errors)


async def test_a_cancelled_task_handed_the_lock_starts_no_fetch() -> None:
    """A task cancelled right after the lock was handed to it must not ask for a token (a pull being
    stopped would otherwise start one more token request per stream)."""
    provider = GatedProvider()
    manager = TokenManager(provider, clock=anyio.current_time)
    holder_scope, waiter_scope = anyio.CancelScope(), anyio.CancelScope()

    async def holder() -> None:
        with holder_scope:
            await manager.get()
        # The holder's cancellation released the lock to the waiter, which has not run yet: cancel it now.
        waiter_scope.cancel()

    async def waiter() -> None:
        with waiter_scope:
            await manager.get()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await anyio.wait_all_tasks_blocked()  # the holder is in the provider
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()  # the waiter waits for the lock
        holder_scope.cancel()
    assert waiter_scope.cancelled_caught
    assert provider.calls == 1
