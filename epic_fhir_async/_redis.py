"""Redis for the SDK's shared state: connecting with a deadline, a lock that expires, values with a TTL.

The web app's token-set store (``auth/_redis_store.py``) is built on these, and anything else that shares state
between processes through Redis can be (a fleet's token cache and rate budget). The ``redis`` package from PyPI
(the ``redis`` extra) is imported only when one of these is used; its asyncio client runs on asyncio only.

Every command has a deadline (``socket_timeout``): a Redis that stops answering is a :class:`StoreUnavailable`
after ``timeout`` seconds, never a hang. Messages name the server without its password and never quote a value
or a redis error's text (which can hold the URL).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from . import _json
from ._errors import ConfigurationError, StoreUnavailable

if TYPE_CHECKING:
    import redis.asyncio

__all__ = [
    "DEFAULT_TIMEOUT",
    "RedisLock",
    "check_url",
    "connect",
    "get_json",
    "get_value",
    "open_client",
    "redis_errors",
    "set_json",
    "set_value",
    "shown_url",
    "unavailable",
]

#: Seconds any one command (or the connection) may take.
DEFAULT_TIMEOUT = 5.0
_SCHEMES = ("redis", "rediss", "unix")
_EXTRA = "pip install 'epic-fhir-async[redis]'"

# Delete the lock only if it still holds our token (an expired lock may have been taken by another process).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def shown_url(url: str) -> str:
    """``url`` without its user and password, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparsable Redis URL>"
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path.partition('?')[0]}"


def check_url(url: object) -> str:
    """``url`` if it is a Redis URL (``redis://``, ``rediss://`` for TLS, ``unix://``), else ConfigurationError."""
    if not isinstance(url, str) or url.partition("://")[0] not in _SCHEMES or "://" not in url:
        shown = shown_url(url) if isinstance(url, str) else type(url).__name__
        raise ConfigurationError(
            f"the Redis URL must start with redis://, rediss:// (TLS) or unix:// (got {shown!r}); keep a "
            "password in it only from a secret store: it is never shown"
        )
    return url


def _asyncio_redis() -> Any:
    """The ``redis.asyncio`` module, checked to be usable here (the extra installed, asyncio running)."""
    try:
        import redis.asyncio as aioredis
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigurationError(f"Redis needs the redis package: {_EXTRA}") from None
    import sniffio

    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:  # not in an event loop: nothing to check yet
        library = "asyncio"
    if library != "asyncio":
        raise ConfigurationError(
            f"redis.asyncio runs on asyncio only (this is {library}): run the app on asyncio, or use an "
            "in-memory store"
        )
    return aioredis


def open_client(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> redis.asyncio.Redis:
    """A ``redis.asyncio`` client for ``url`` whose every command and connection has ``timeout`` seconds (one
    retry on a broken connection, so a command ends within about twice that).

    Nothing is sent yet (see :func:`connect`); raises :class:`ConfigurationError` for a bad URL, a bad timeout or
    a missing ``redis`` package.
    """
    check_url(url)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ConfigurationError(f"timeout={timeout!r}: the deadline of one Redis command in seconds, > 0")
    aioredis = _asyncio_redis()
    from redis.backoff import NoBackoff

    # One immediate retry (a pooled connection the server closed), not redis-py's default of several with
    # backoff: a command ends within about twice the deadline.
    client: redis.asyncio.Redis = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=30,
        retry=aioredis.retry.Retry(NoBackoff(), 1),
    )
    return client


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a failing Redis raises: redis-py's errors, sockets' ``OSError`` and our deadline."""
    import redis.exceptions

    return (redis.exceptions.RedisError, OSError, TimeoutError)


def unavailable(
    what: str, url: str, exc: BaseException, *, error: type[StoreUnavailable] = StoreUnavailable
) -> StoreUnavailable:
    """The error for a Redis command that failed: ``what`` was being done, the server by its shown URL.

    ``error`` is the class raised: a :class:`StoreUnavailable` (the fleet's ``RedisUnavailable`` is one).
    """
    return error(
        f"{what}: Redis at {shown_url(url)} did not answer ({type(exc).__name__}); check that it runs and is "
        "reachable from here"
    )


async def connect(
    url: str,
    *,
    deadline: float = DEFAULT_TIMEOUT,
    what: str = "connecting",
    error: type[StoreUnavailable] = StoreUnavailable,
) -> redis.asyncio.Redis:
    """A client that has answered a PING within ``deadline`` seconds (also each later command's deadline),
    else ``error`` (a :class:`StoreUnavailable`)."""
    client = open_client(url, timeout=deadline)
    try:
        with anyio.fail_after(deadline):
            await client.ping()
    except redis_errors() as exc:
        await client.aclose()
        raise unavailable(what, url, exc, error=error) from None
    return client


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


async def set_value(client: redis.asyncio.Redis, key: str, value: bytes, *, ttl: float | None) -> None:
    """Store ``value`` under ``key`` for ``ttl`` seconds (``None``: until deleted)."""
    await client.set(key, value, px=None if ttl is None else _ms(ttl))


async def get_value(client: redis.asyncio.Redis, key: str) -> bytes | None:
    """The bytes under ``key``, or ``None`` when there is nothing (or it expired)."""
    value = await client.get(key)
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else bytes(value)  # str with decode_responses=True


async def set_json(client: redis.asyncio.Redis, key: str, value: Any, *, ttl: float | None) -> None:
    """Store ``value`` as JSON under ``key`` for ``ttl`` seconds (``None``: until deleted)."""
    await set_value(client, key, _json.dumps(value), ttl=ttl)


async def get_json(client: redis.asyncio.Redis, key: str) -> Any | None:
    """The JSON value under ``key`` (``None`` when missing, expired or not JSON)."""
    raw = await get_value(client, key)
    if raw is None:
        return None
    try:
        return _json.loads(raw)
    except ValueError:
        return None


class RedisLock:
    """A lock shared by every process that uses the same Redis key: ``async with RedisLock(client, key, ...)``.

    Taken with ``SET key token NX PX ttl``, so it expires ``ttl`` seconds after it was taken: a process killed
    while holding it blocks the others for at most that long. Released only by its holder (a compare-and-delete
    script). A waiter polls every ``poll`` seconds for up to ``wait`` seconds (default ``ttl`` plus one, so a
    dead holder's lock has expired by then) and then raises :class:`StoreUnavailable`. Keep the work done under
    it shorter than ``ttl``: past it, another process may take the lock while the work goes on.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        key: str,
        *,
        ttl: float,
        wait: float | None = None,
        poll: float = 0.02,
        url: str = "redis://",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < ttl < math.inf:
            raise ConfigurationError(f"lock ttl={ttl!r}: seconds > 0")
        self._client = client
        self.key = key
        self._ttl_ms = _ms(ttl)
        self._wait = ttl + 1.0 if wait is None else wait
        self._poll = poll
        self._url = url
        self._clock = clock
        self._token = secrets.token_hex(16)
        self.held = False

    def __repr__(self) -> str:
        return f"RedisLock({self.key!r}, held={self.held})"

    async def acquire(self) -> None:
        give_up = self._clock() + self._wait
        try:
            while not await self._client.set(self.key, self._token, nx=True, px=self._ttl_ms):
                if self._clock() >= give_up:
                    raise StoreUnavailable(
                        f"the lock {self.key!r} in Redis at {shown_url(self._url)} was still held after "
                        f"{self._wait:g} s: try again"
                    )
                await anyio.sleep(self._poll)
        except redis_errors() as exc:
            raise unavailable("taking a lock", self._url, exc) from None
        self.held = True

    async def release(self) -> None:
        if not self.held:
            return
        self.held = False
        # Shielded: a cancelled request must still free the lock now, not ttl seconds later.
        # (On a Redis error it expires on its own after ttl seconds.)
        with anyio.CancelScope(shield=True), contextlib.suppress(*redis_errors()):
            await self._client.eval(_RELEASE, 1, self.key, self._token)

    async def __aenter__(self) -> RedisLock:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()
