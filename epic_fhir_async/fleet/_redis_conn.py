"""The fleet's Redis settings, and connecting with them through the SDK's shared Redis code (``_redis``).

``redis.asyncio`` runs on asyncio only, so the fleet's shared state does too: each worker runs its own
asyncio loop (see ``_worker``), whatever the caller's event loop is. Every command has a deadline
(``RedisSettings.timeout``), so a Redis server that stops answering is a :class:`RedisUnavailable` after that
long, never a hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import _redis
from .._errors import ConfigurationError
from ._errors import RedisUnavailable

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisSettings", "connect", "ping_blocking"]

_WHAT = "the fleet's shared state"


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
        _redis.check_url(self.url)
        rate = self.requests_per_second
        if rate is not None and (isinstance(rate, bool) or not 0 < float(rate) < float("inf")):
            raise ConfigurationError("requests_per_second must be a positive number (or None for no budget)")
        if self.burst is not None and (isinstance(self.burst, bool) or self.burst < 1):
            raise ConfigurationError("burst must be a positive number of requests")
        for name in ("lock_ttl", "timeout"):
            value = getattr(self, name)
            if not 0 < float(value) < float("inf"):
                raise ConfigurationError(f"{name} must be a positive number of seconds")

    def __repr__(self) -> str:
        # The URL may hold a password: never shown (Dask logs a failed task's arguments).
        return (
            f"RedisSettings(url={self.shown_url!r}, requests_per_second={self.requests_per_second!r}, "
            f"burst={self.burst!r}, prefix={self.prefix!r})"
        )

    @property
    def shown_url(self) -> str:
        """The URL without its password, for messages."""
        return _redis.shown_url(self.url)

    @property
    def effective_burst(self) -> int:
        if self.burst is not None:
            return self.burst
        return max(1, int((self.requests_per_second or 10.0) / 10))


async def connect(settings: RedisSettings) -> redis.asyncio.Redis:
    """A client that has answered a PING within ``settings.timeout``, or :class:`RedisUnavailable`."""
    return await _redis.connect(settings.url, deadline=settings.timeout, what=_WHAT, error=RedisUnavailable)


def ping_blocking(settings: RedisSettings) -> None:
    """The driver's check, before anything else: a synchronous PING within the deadline.

    Synchronous because ``fleet_pull`` is, and may be called from a thread that runs another event loop (or
    trio), where ``redis.asyncio`` cannot run.
    """
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
    except _redis.redis_errors() as exc:
        raise _redis.unavailable(_WHAT, settings.url, exc, error=RedisUnavailable) from None
    finally:
        client.close()
