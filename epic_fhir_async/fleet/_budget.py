"""One rate budget for the whole fleet: requests per second and the 429 pause, shared through Redis.

Epic throttles per client id, not per process (docs/epic-notes.md §1.8), so the budget is keyed by the
client id and the FHIR server's origin, and every worker of every job with that client draws from it.

* **Requests per second**: a token bucket kept as GCRA (one "theoretical arrival time" per budget). Each
  request *reserves* its slot in one round trip (a Lua script on Redis's own clock, ``TIME``) and sleeps
  until it; nobody polls, and ``burst`` requests may go at once after a quiet spell.
* **The 429 pause**: when any worker gets a 429, it records ``now + Retry-After`` (on Redis's clock; the
  later of two pauses wins); every reservation starts after it, so every worker waits, not just the one
  that was told to. The worker that got the 429 retries it through the client's own retrying transport.

:class:`FleetTransport` is the hook: it wraps the worker's real transport, *under* the client's retrying
transport, so every attempt (retries and token requests too) takes its slot, and every 429 is seen. (A 401
is the token manager's: it drops the refused token from the shared cache itself.)
It also counts requests and 429s per shard for the job's progress display. If Redis fails mid-job it logs a
warning and lets the request go (each worker's own 429 handling still applies): a Redis blip slows nothing.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import httpx

from .._headers import parse_retry_after
from .._redis import redis_errors
from .._retry import RetryPolicy

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["FleetTransport", "SharedBudget", "ShardStats", "current_stats"]

logger = logging.getLogger("epic_fhir_async.fleet")

# Reserve the next slot. KEYS: arrival time, pause. ARGV: interval (us, 0 = no budget), tolerance (us),
# key TTL (ms). Returns microseconds to wait. Times are integers of microseconds since the epoch, formatted
# with %.0f: Lua's tostring keeps only 14 digits.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local base = now
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > base then base = pause end
local interval = tonumber(ARGV[1])
if interval <= 0 then return base - now end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local send = base
if tat - tonumber(ARGV[2]) > send then send = tat - tonumber(ARGV[2]) end
local nxt = math.max(tat, base) + interval
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', ARGV[3])
return send - now
"""
# Pause everyone for ARGV[1] microseconds from now (a longer pause already set stays).
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untl = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > cur then
  redis.call('SET', KEYS[1], string.format('%.0f', untl), 'PX', math.floor(tonumber(ARGV[1]) / 1000) + 1000)
end
return 1
"""
# Microseconds until the pause ends (0 when none).
_PAUSED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = tonumber(redis.call('GET', KEYS[1]) or '0')
if pause > now then return pause - now end
return 0
"""


@dataclass
class ShardStats:
    """Requests sent (every attempt), 429s received and seconds spent waiting for the budget or a pause."""

    requests: int = 0
    rate_limited: int = 0
    waited: float = 0.0


_WORKER_STATS = ShardStats()  # requests made outside any shard (the first-token check)
_CURRENT: contextvars.ContextVar[ShardStats] = contextvars.ContextVar("epic_fhir_fleet_stats")


def current_stats() -> ShardStats:
    return _CURRENT.get(_WORKER_STATS)


def use_stats(stats: ShardStats) -> contextvars.Token[ShardStats]:
    """Count this task's requests (and those of the tasks it starts) in ``stats``."""
    return _CURRENT.set(stats)


class SharedBudget:
    """The fleet's budget for one (FHIR origin, client id) in Redis; see the module docstring."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        origin: str,
        client_id: str,
        requests_per_second: float | None,
        burst: int = 1,
        prefix: str = "epic-fhir",
    ) -> None:
        digest = hashlib.sha256(f"{origin}\n{client_id}".encode()).hexdigest()[:16]
        base = f"{prefix}:budget:{{{digest}}}"
        self.keys = [f"{base}:tat", f"{base}:pause"]
        self.requests_per_second = requests_per_second
        interval = 1_000_000 / requests_per_second if requests_per_second else 0.0
        self._args = [int(interval), int(interval * (burst - 1)), 60_000]
        self._acquire = client.register_script(_ACQUIRE)
        self._pause = client.register_script(_PAUSE)
        self._paused = client.register_script(_PAUSED)

    async def acquire(self) -> float:
        """Reserve this request's slot; seconds to wait before sending (0.0: go now)."""
        return max(0, int(await self._acquire(keys=self.keys, args=self._args))) / 1_000_000

    async def pause_left(self) -> float:
        return max(0, int(await self._paused(keys=self.keys[1:]))) / 1_000_000

    async def pause(self, seconds: float) -> None:
        """Every worker waits ``seconds`` from now before its next request."""
        await self._pause(keys=self.keys[1:], args=[int(seconds * 1_000_000)])


class FleetTransport(httpx.AsyncBaseTransport):
    """The worker's transport under the client's retrying one: budget, shared pause, counters."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        budget: SharedBudget | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.inner = inner
        self.budget = budget
        self.policy = policy or RetryPolicy()
        self._warned_at = -1e9

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stats = current_stats()
        if self.budget is not None:
            await self._wait_turn(self.budget, stats)
        response = await self.inner.handle_async_request(request)
        stats.requests += 1
        status = response.status_code
        if status == 429:
            stats.rate_limited += 1
            if self.budget is not None:
                await self._pause_everyone(self.budget, response)
        return response

    async def _wait_turn(self, budget: SharedBudget, stats: ShardStats) -> None:
        try:
            wait = await budget.acquire()
            while wait > 0:
                await anyio.sleep(wait)
                stats.waited += wait
                wait = await budget.pause_left()  # a pause set while we slept holds us too
        except redis_errors() as exc:
            self._warn(exc)

    async def _pause_everyone(self, budget: SharedBudget, response: httpx.Response) -> None:
        seconds = parse_retry_after(response.headers.get("retry-after"))
        if seconds is None:
            seconds = self.policy.backoff_base
        if seconds > self.policy.max_retry_after:
            return  # the client gives up on this request rather than wait that long: so does the fleet
        try:
            await budget.pause(seconds)
        except redis_errors() as exc:
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 60:
            self._warned_at = now
            logger.warning(
                "the fleet's rate budget in Redis failed (%s): requests go on without it", type(exc).__name__
            )

    async def aclose(self) -> None:
        await self.inner.aclose()
