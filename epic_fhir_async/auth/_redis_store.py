"""The token sets of a web app's signed-in users in Redis, encrypted, shared by every worker (asyncio only).

Each session is one key, ``<prefix>:smart-session:<sha256 of the session id>`` (a dump of Redis does not hold
the cookies that would open the sessions), whose value is the token set encrypted with the app's
:class:`TokenCipher` and whose Redis TTL is the session's life. The refresh lock of a session is the key
``...:refresh-lock`` (:class:`~epic_fhir_async._redis.RedisLock`: it expires, so a worker killed while
refreshing blocks that user for at most ``lock_ttl`` seconds).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from .. import _redis
from .._errors import ConfigurationError, TokenSetUnreadable
from ._smart_tokens import SmartTokenSet
from ._token_store import DEFAULT_SESSION_TTL, TokenCipher, check_ttl, entry_ttl

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisTokenSetStore"]


class RedisTokenSetStore:
    """A :class:`TokenSetStore` in Redis, for an app with several workers (or machines).

    ``redis``: a URL (``redis://host:6379/0``, ``rediss://`` for TLS; a password in it is never shown) or a
    ``redis.asyncio.Redis`` you made (then closing it is yours). ``cipher`` encrypts every token set (required:
    refresh tokens are long-lived credentials). ``ttl``: a session lives that long after its last save (sign-in
    or refresh). ``lock_ttl``: the longest one worker may hold a session's refresh lock (keep it above a token
    request's duration); others wait up to ``lock_ttl`` + 1 s. ``timeout``: every Redis command's deadline;
    past it, :class:`~epic_fhir_async.StoreUnavailable`. Needs the ``redis`` extra and asyncio.
    """

    def __init__(
        self,
        redis: str | redis.asyncio.Redis,
        *,
        cipher: TokenCipher,
        prefix: str = "epic-fhir",
        ttl: float | None = DEFAULT_SESSION_TTL,
        lock_ttl: float = 30.0,
        timeout: float = _redis.DEFAULT_TIMEOUT,
    ) -> None:
        if not isinstance(cipher, TokenCipher):
            raise ConfigurationError(
                "RedisTokenSetStore needs cipher=TokenCipher(key): refresh tokens are stored encrypted"
            )
        if not isinstance(prefix, str) or not prefix or any(c.isspace() for c in prefix):
            raise ConfigurationError("prefix must be a non-empty Redis key prefix without spaces")
        self._cipher = cipher
        self._prefix = prefix
        self._ttl = check_ttl(ttl)
        self._lock_ttl = check_ttl(lock_ttl, "lock_ttl") or 30.0
        if isinstance(redis, str):
            self._url = _redis.check_url(redis)
            self._client = _redis.open_client(redis, timeout=timeout)
            self._owns_client = True
        else:
            self._url = "redis://(the client you passed)"
            self._client = redis
            self._owns_client = False

    def __repr__(self) -> str:
        return f"RedisTokenSetStore({_redis.shown_url(self._url)!r}, prefix={self._prefix!r})"

    async def check(self) -> None:
        """PING the server: :class:`~epic_fhir_async.StoreUnavailable` unless it answers in time (call it at
        start-up to fail there rather than on the first user's request)."""
        try:
            await self._client.ping()
        except _redis.redis_errors() as exc:
            raise _redis.unavailable("checking the session store", self._url, exc) from None

    async def aclose(self) -> None:
        """Close the connections (of a client this store made; yours stays open)."""
        if self._owns_client:
            await self._client.aclose()

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}:smart-session:{hashlib.sha256(session_id.encode()).hexdigest()}"

    async def save(self, session_id: str, token_set: SmartTokenSet) -> None:
        if not isinstance(token_set, SmartTokenSet):
            raise ConfigurationError("a TokenSetStore keeps SmartTokenSets")
        value = self._cipher.encrypt(token_set.to_dict())
        try:
            await _redis.set_value(
                self._client, self._key(session_id), value, ttl=entry_ttl(token_set, self._ttl)
            )
        except _redis.redis_errors() as exc:
            raise _redis.unavailable("saving a session", self._url, exc) from None

    async def load(self, session_id: str) -> SmartTokenSet | None:
        try:
            value = await _redis.get_value(self._client, self._key(session_id))
        except _redis.redis_errors() as exc:
            raise _redis.unavailable("loading a session", self._url, exc) from None
        if value is None:
            return None
        data = self._cipher.decrypt(value)
        try:
            return SmartTokenSet.from_dict(data)
        except ConfigurationError:
            raise TokenSetUnreadable("the stored token set is damaged: sign in again") from None

    async def delete(self, session_id: str) -> None:
        try:
            await self._client.delete(self._key(session_id))
        except _redis.redis_errors() as exc:
            raise _redis.unavailable("ending a session", self._url, exc) from None

    def lock(self, session_id: str) -> _redis.RedisLock:
        return _redis.RedisLock(
            self._client, f"{self._key(session_id)}:refresh-lock", ttl=self._lock_ttl, url=self._url
        )
