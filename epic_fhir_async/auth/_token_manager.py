"""The token manager: lazy, single-flight, proactively refreshed tokens without a background task.

Integrators of Epic report refresh storms (hundreds of token calls a minute from parallel workers) and tokens
that die in the middle of paging. The manager makes both impossible:

* :meth:`TokenManager.get` returns the current token without awaiting anything while it is fresh (the hot
  path of every request); otherwise it takes an :class:`anyio.Lock`, re-checks, and only the first waiter
  asks the provider. However many tasks wait, one token request is made per expiry.
* "Fresh" ends a margin before expiry. The margin adapts to the token's lifetime,
  ``min(leeway, 10 % of lifetime)``, so an hour-long Epic token is refreshed a minute early and a
  3-second test token 0.3 s early, not on every request.
* :meth:`TokenManager.invalidate` drops a token only if it is still the current one, so fifty tasks that
  all got a 401 with the same token cause one refresh, not fifty. The refresh that follows first deletes the
  refused token from the cache (``cache.delete(key, token)``: only while the cache still holds it), so other
  holders of a shared cache (auth objects, workers) are not handed a token the server refused, and a shared
  cache with a lock (the fleet's) makes them wait for the one replacement instead of each fetching its own.
* A failed fetch fails its whole round: every task that was waiting for the lock while it ran gets the same
  error (a copy of it, chained to the original) instead of starting a fetch of its own. Without this, a
  token endpoint that is down, a wrong client id or key, or a failing SMART discovery cost one token
  request per waiting task, one after the other (a reviewer counted 864 token requests in 435 s for a pull
  that should have stopped at once). A call that *starts* after the round ended tries again: nothing is
  remembered past the round, so the manager recovers as soon as the endpoint does.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Union

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from .._errors import ConfigurationError
from ._token import AccessToken
from ._token_cache import InMemoryTokenCache, TokenCache, TokenCacheKey

__all__ = ["TokenManager", "TokenProvider", "is_token_failure", "refresh_margin"]

logger = logging.getLogger("epic_fhir_async.auth")

#: Fetches a brand-new token (the grant's token request). Tokens must be timed on the manager's clock.
TokenProvider = Callable[[], Awaitable[AccessToken]]
CacheKeySource = Union[TokenCacheKey, Callable[[], Awaitable[TokenCacheKey]], None]  # noqa: UP007 (runtime alias, py3.10)

#: After a proactive refresh failed while the old token is still valid, wait this long before trying again
#: (never past the old token's expiry), so a failing token endpoint is not hit on every request.
_RETRY_FAILED_REFRESH_AFTER = 5.0


#: Attribute set on every exception raised while getting a token (discovery, the cache key, the provider).
_TOKEN_FAILURE = "_epic_token_failure"


def is_token_failure(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) came out of getting a token.

    A request fails this way when the credentials or the setup are wrong, or the token endpoint or SMART
    discovery is unreachable, whatever the request was for: callers that fan out (the pull) treat it as
    fatal to all their work, not as one failed request. Covers a :class:`TransportError` of the token
    request, which is otherwise indistinguishable from one of the FHIR request itself.
    """
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:  # bounded: a cause chain can be made circular
        if getattr(current, _TOKEN_FAILURE, False):
            return True
        current = current.__cause__
        seen += 1
    return False


def _mark(error: Exception) -> None:
    setattr(error, _TOKEN_FAILURE, True)  # every exception has a __dict__ (BaseException provides it)


def _for_waiter(error: Exception) -> Exception:
    """The failure of a round for a task that waited on it: a fresh instance (one exception object raised in
    many tasks would collect every task's traceback), chained to the original, which has the real traceback."""
    try:
        twin = copy.copy(error)  # BaseException.__reduce__: cls(*args) plus the instance __dict__
    except Exception:  # a constructor with required keyword arguments: share the original
        return error
    twin.__cause__ = error
    return twin


def refresh_margin(lifetime: float | None, leeway: float) -> float:
    """Seconds before expiry at which a token stops being fresh: ``min(leeway, lifetime / 10)``."""
    if lifetime is None or lifetime <= 0:
        return leeway
    return min(leeway, lifetime * 0.1)


class TokenManager:
    """Hands out the current token and refreshes it at most once per expiry.

    ``provider`` is an async callable returning a new :class:`AccessToken` whose times are on ``clock``
    (seconds, ``time.monotonic`` by default). ``leeway`` (seconds, default 60) is the largest refresh margin.
    ``cache`` defaults to a private :class:`InMemoryTokenCache`; ``cache_key`` (a :class:`TokenCacheKey`, or
    an async callable returning one, for grants that discover their token URL lazily) names the entry.
    Without a key the cache is not used. Works on asyncio and trio; starts no background task.
    """

    def __init__(
        self,
        provider: TokenProvider,
        *,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        cache: TokenCache | None = None,
        cache_key: CacheKeySource = None,
    ) -> None:
        if leeway < 0 or not math.isfinite(leeway):
            raise ConfigurationError("leeway must be a finite number of seconds >= 0")
        self._provider = provider
        self._leeway = float(leeway)
        self._clock = clock
        self._cache: TokenCache = cache if cache is not None else InMemoryTokenCache()
        self._cache_key = cache_key
        self._lock = anyio.Lock()
        self._token: AccessToken | None = None
        self._refresh_at = -math.inf
        self._rejected: AccessToken | None = None
        self._unshared: AccessToken | None = None  # refused, still to be deleted from the cache
        # Rounds of the lock (one fetch attempt each) and how the last one failed, if it did: a task that
        # waited through a failed round raises its error instead of fetching again.
        self._round = 0
        self._failure: Exception | None = None
        self.fetches = 0  #: how many times the provider was called (useful in tests and metrics)

    def __repr__(self) -> str:
        return f"TokenManager(token={self._token!r}, leeway={self._leeway}, fetches={self.fetches})"

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @property
    def current(self) -> AccessToken | None:
        """The token held right now (fresh or not), without fetching."""
        return self._token

    async def get(self) -> AccessToken:
        """The current token, fetched or refreshed first when it is missing or about to expire."""
        token = self._token
        if token is not None and self._clock() < self._refresh_at:
            return token  # hot path: no lock, no await
        return await self._refresh()

    def invalidate(self, token: AccessToken | None = None) -> bool:
        """Drop ``token`` if it is still the current one (``None``: drop whatever is current).

        Returns whether something was dropped. Call it after a 401 with the token the request carried:
        when another task has already replaced that token, this is a no-op and the next :meth:`get`
        returns the replacement without a new token request. The next refresh deletes the dropped token from
        the cache, if the cache still holds it.
        """
        current = self._token
        if current is None or (token is not None and token is not current):
            return False
        self._rejected = current
        self._unshared = current
        self._token = None
        self._refresh_at = -math.inf
        return True

    def set(self, token: AccessToken) -> None:
        """Install a token obtained elsewhere (for example the first token of a SMART launch)."""
        self._install(token)

    def _install(self, token: AccessToken) -> None:
        self._token = token
        margin = refresh_margin(token.lifetime, self._leeway)
        self._refresh_at = token.expires_at - margin

    async def _key(self) -> TokenCacheKey | None:
        source = self._cache_key
        if source is None or isinstance(source, tuple):
            return source
        return await source()

    def _usable(self, token: AccessToken, now: float) -> bool:
        if token is self._rejected:
            return False
        return now < token.expires_at - refresh_margin(token.lifetime, self._leeway)

    async def _refresh(self) -> AccessToken:
        joined = self._round
        async with self._lock:
            now = self._clock()
            token = self._token
            if token is not None and now < self._refresh_at:
                return token  # another task refreshed while we waited for the lock
            failure = self._failure
            if failure is not None and self._round != joined:
                raise _for_waiter(failure)  # the fetch we waited for failed: the same answer, no new request
            # A task cancelled while it waited can be handed the lock before the cancellation reaches it
            # (anyio on asyncio and trio): it must not start a token request for work that is being stopped.
            await checkpoint_if_cancelled()
            try:
                fresh = await self._fetch(token, now)
            except Exception as exc:
                _mark(exc)
                self._end_round(exc)
                if token is not None and now < token.expires_at:
                    # A proactive refresh failed but the old token still works: keep using it and try
                    # again shortly; the error surfaces if the token really runs out.
                    logger.warning(
                        "token refresh failed; using the current token for %.1f more seconds",
                        token.expires_at - now,
                        exc_info=True,
                    )
                    self._refresh_at = min(token.expires_at, now + _RETRY_FAILED_REFRESH_AFTER)
                    self._failure = None  # waiters of this round get the old token, not the error
                    return token
                raise
            self._end_round(None)
            return fresh

    def _end_round(self, failure: Exception | None) -> None:
        self._round += 1
        # Kept only for the tasks queued on the lock now (the waiters of this round): with none, nothing holds
        # on to the error and its traceback's frames.
        self._failure = failure if self._lock.statistics().tasks_waiting else None

    async def _fetch(self, token: AccessToken | None, now: float) -> AccessToken:
        """A usable token from the shared cache, else from the provider (installed and cached)."""
        key = await self._key()  # may run SMART discovery: its failure fails the round like the provider's
        if key is not None:
            refused, self._unshared = self._unshared, None
            if refused is not None:
                # Only while the cache still holds it: another holder may have stored a replacement already.
                await self._cache.delete(key, refused)
            cached = await self._cache.get(key)
            if cached is not None and cached is not token and self._usable(cached, now):
                self._install(cached)
                return cached
        try:
            fresh = await self._provider()
        finally:
            self.fetches += 1
        self._install(fresh)
        self._rejected = None
        if key is not None:
            await self._cache.set(key, fresh)
        return fresh
