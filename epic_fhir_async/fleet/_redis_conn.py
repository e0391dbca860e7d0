"""Connecting to Redis with a deadline: the minimal primitives the fleet needs (``redis`` from PyPI).

``redis.asyncio`` runs on asyncio only, so the fleet's shared state does too: each worker runs its own
asyncio loop (see ``_worker``), whatever the caller's event loop is. Every command has a socket timeout, so
a Redis server that stops answering is an error after ``timeout`` seconds, never a hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError
from .._urls import redact_url
from ._errors import RedisUnavailable

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisSettings", "connect", "ping_blocking"]

_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, repr=False)
class RedisSettings:
    """Where the fleet's shared state lives and how it is used.

    ``url``: ``redis://host:port/db`` (``rediss://`` for TLS; put a password in the URL only from a secret
    store: it is never shown in errors). ``requests_per_second``: the fleet-wide budget of requests to the
    FHIR server (``None``: no budget, only the shared 429 pause); ``burst``: how many may go at once after
    a quiet spell (default: a tenth of a second's worth, at least 1). ``prefix`` names the keys;
    ``lock_ttl`` bounds how long a worker may hold the token lock (a dead worker releases it by expiry);
    ``timeout`` is every command's deadline.
    """

    url: str
    requests_per_second: float | None = None
    burst: int | None = None
    prefix: str = "epic-fhir"
    lock_ttl: float = 15.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        scheme = self.url.partition("://")[0] if "://" in self.url else ""
        if scheme not in _SCHEMES:
            raise ConfigurationError(
                f"the Redis URL must start with redis://, rediss:// or unix:// (got {self.shown_url!r})"
            )
        rate = self.requests_per_second
        if rate is not None and (isinstance(rate, bool) or not 0 < float(rate) < float("inf")):
            raise ConfigurationError("requests_per_second must be a positive number (or None for no budget)")
        if self.burst is not None and (isinstance(self.burst, bool) or self.burst < 1):
            raise ConfigurationError("burst must be a positive number of requests")
        for name in ("lock_ttl", "timeout"):
            value = getattr(self, name)
            if not 0 < float(value) < float("inf"):
                raise ConfigurationError(f"{name} must be a positive number of seconds")

    def __repr__(
        self,
    ) -> str:  # the URL may hold a password: never shown (Dask logs a failed task's arguments)
        return (
            f"RedisSettings(url={self.shown_url!r}, requests_per_second={self.requests_per_second!r}, "
            f"burst={self.burst!r}, prefix={self.prefix!r})"
        )

    @property
    def shown_url(self) -> str:
        """The URL without its password, for messages."""
        scheme, sep, rest = self.url.partition("://")
        if not sep:
            return redact_url(self.url)
        netloc, slash, path = rest.partition("/")
        host = netloc.rpartition("@")[2]
        return f"{scheme}://{host}{slash}{path}"

    @property
    def effective_burst(self) -> int:
        if self.burst is not None:
            return self.burst
        return max(1, int((self.requests_per_second or 10.0) / 10))


def _client(settings: RedisSettings) -> redis.asyncio.Redis:
    try:
        import redis.asyncio as aioredis
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigurationError(
            "the fleet's shared state needs the redis package: pip install 'epic-fhir-async[fleet]'"
        ) from None
    return aioredis.from_url(
        settings.url,
        socket_connect_timeout=settings.timeout,
        socket_timeout=settings.timeout,
        health_check_interval=30,
    )


async def connect(settings: RedisSettings) -> redis.asyncio.Redis:
    """A client that has answered a PING within ``settings.timeout``, or :class:`RedisUnavailable`."""
    import redis.exceptions

    client = _client(settings)
    try:
        await client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        await client.aclose()
        raise RedisUnavailable(
            f"Redis at {settings.shown_url} did not answer ({type(exc).__name__}): check the URL and that the "
            "server runs and is reachable from here"
        ) from None
    return client


def ping_blocking(settings: RedisSettings) -> None:
    """The driver's check, before anything else: a synchronous PING within the deadline."""
    try:
        import redis
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigurationError(
            "the fleet's shared state needs the redis package: pip install 'epic-fhir-async[fleet]'"
        ) from None
    client: Any = redis.Redis.from_url(
        settings.url, socket_connect_timeout=settings.timeout, socket_timeout=settings.timeout
    )
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        raise RedisUnavailable(
            f"Redis at {settings.shown_url} did not answer ({type(exc).__name__}): check the URL and that the "
            "server runs and is reachable from here"
        ) from None
    finally:
        client.close()
