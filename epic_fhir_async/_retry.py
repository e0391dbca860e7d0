"""Retries: a pure policy (``should_retry``, ``retry_delay``) and ``RetryTransport``, a thin async adapter.

The transport wraps another ``httpx.AsyncBaseTransport`` (hishel's ``next_transport`` shape). It retries
idempotent methods, and POSTs only when the request carries ``extensions["epic_fhir_async.retry_safe"]``
(``_search`` POSTs, the bulk kick-off). A 429's ``Retry-After`` closes ONE gate shared by every request going
through the transport, so a rate limit pauses the whole client, not only the task that received it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TypeGuard

import anyio
import httpx

from ._config import LOGGER_NAME
from ._errors import ConfigurationError, redact_url
from ._limits import read_limited
from ._retry_after import parse_retry_after

__all__ = [
    "NO_RETRY",
    "READ_BODY",
    "RETRY_SAFE",
    "RetryPolicy",
    "RetryTransport",
    "retry_delay",
    "should_retry",
]

log = logging.getLogger(f"{LOGGER_NAME}.retry")

#: Request extension marking a POST as safe to repeat (FHIR ``_search``, ``$export`` kick-off).
RETRY_SAFE = "epic_fhir_async.retry_safe"
#: Request extension asking the transport to read the whole body inside its retry loop, so a connection cut
#: mid-body (headers already received) is retried like any other connection error. Its value is the body's
#: size limit in bytes (or True for none). Set by the client for every non-streaming request; streamed
#: bodies (bulk files) resume on their own.
READ_BODY = "epic_fhir_async.read_body"
#: Request extension that disables retries for one request (the bulk kick-off: Epic's "requested this Group
#: too recently" 429 must reach the caller at once, not be retried or close the shared 429 gate).
NO_RETRY = "epic_fhir_async.no_retry"
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries; every duration in seconds.

    ``max_attempts`` counts the first try (1 disables retries). Backoff is ``backoff_base * 2**n`` capped at
    ``backoff_max``, with up to ``jitter`` (fraction) of it randomised. The sum of waits for one request never
    exceeds ``max_total_wait``. A ``Retry-After`` above ``max_retry_after`` is not slept on: the response is
    returned and the client raises :class:`~epic_fhir_async.RateLimited` (servers have sent epoch timestamps).
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.5
    max_total_wait: float = 120.0
    max_retry_after: float = 120.0
    statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
    retry_on_connection_errors: bool = True

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy(max_attempts={attempts!r}): it counts the first try, so it must be an int >= 1 "
                "(1 disables retries)"
            )
        for name in ("backoff_base", "backoff_max", "max_total_wait", "max_retry_after"):
            _check_seconds(name, getattr(self, name))
        if not _is_number(self.jitter) or not 0.0 <= self.jitter <= 1.0:
            raise ConfigurationError(
                f"RetryPolicy(jitter={self.jitter!r}): a fraction of the backoff, between 0 and 1"
            )
        statuses: Collection[object] = self.statuses
        if isinstance(statuses, (str, bytes)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            raise ConfigurationError(
                "RetryPolicy(statuses=...): a collection of HTTP status codes (ints 100-599), e.g. {429, 503}"
            )
        # A set or list is accepted; the frozen policy keeps an immutable, hashable copy.
        object.__setattr__(self, "statuses", frozenset(statuses))


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _check_seconds(name: str, value: object) -> None:
    if not _is_number(value) or value < 0:
        raise ConfigurationError(f"RetryPolicy({name}={value!r}): a number of seconds >= 0")


def is_retryable_method(method: str, extensions: Collection[str] | dict[str, object]) -> bool:
    """GET/HEAD/PUT/DELETE/OPTIONS always; POST only when marked :data:`RETRY_SAFE`; never :data:`NO_RETRY`."""
    if isinstance(extensions, dict) and extensions.get(NO_RETRY):
        return False
    if method in _IDEMPOTENT:
        return True
    return isinstance(extensions, dict) and bool(extensions.get(RETRY_SAFE))


def should_retry(
    policy: RetryPolicy,
    *,
    attempt: int,
    method_ok: bool,
    status_code: int | None = None,
    connection_error: bool = False,
) -> bool:
    """Whether attempt number ``attempt`` (1-based, just finished) may be followed by another."""
    if not method_ok or attempt >= policy.max_attempts:
        return False
    if connection_error:
        return policy.retry_on_connection_errors
    return status_code is not None and status_code in policy.statuses


def retry_delay(
    policy: RetryPolicy,
    *,
    attempt: int,
    retry_after: str | None = None,
    waited: float = 0.0,
    rand: Callable[[], float] = random.random,
    now: float | None = None,
) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` when the wait would break a cap.

    A ``Retry-After`` (delta-seconds or HTTP-date) wins over backoff; above ``max_retry_after`` it gives
    ``None``. Any wait that would push the total past ``max_total_wait`` gives ``None``.
    """
    server = parse_retry_after(retry_after, now=now)
    if server is not None:
        if server > policy.max_retry_after:
            return None
        delay = server
    else:
        base = min(policy.backoff_max, policy.backoff_base * (2 ** max(0, attempt - 1)))
        delay = base * (1.0 - policy.jitter * rand())
    if waited + delay > policy.max_total_wait:
        return None
    return delay


class _Gate:
    """One pause shared by every request of a transport: nobody sends before ``open_at`` (monotonic)."""

    __slots__ = ("open_at",)

    def __init__(self) -> None:
        self.open_at = 0.0


class RetryTransport(httpx.AsyncBaseTransport):
    """Wrap ``next_transport`` with :class:`RetryPolicy` retries and a shared 429 gate.

    ``sleep`` and ``clock`` are injectable for tests (defaults ``anyio.sleep`` and ``time.monotonic``).
    """

    def __init__(
        self,
        next_transport: httpx.AsyncBaseTransport,
        *,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.next_transport = next_transport
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self._gate = _Gate()
        #: Requests re-sent so far (every retry of every request); read by pull progress displays.
        self.retries = 0

    async def _wait_gate(self) -> float:
        pause = self._gate.open_at - self._clock()
        if pause > 0:
            await self._sleep(pause)
            return pause
        return 0.0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        policy = self.policy
        method_ok = is_retryable_method(request.method, request.extensions)
        read_body = request.extensions.get(READ_BODY)  # a byte limit, or True for none
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            if self._gate.open_at:
                waited += await self._wait_gate()
            try:
                response = await self.next_transport.handle_async_request(request)
                if read_body:
                    await read_limited(response, None if read_body is True else read_body, request=request)
            except httpx.TransportError as exc:
                if not isinstance(
                    exc,
                    (
                        httpx.ConnectError,
                        httpx.ReadError,
                        httpx.WriteError,
                        httpx.RemoteProtocolError,
                        httpx.TimeoutException,
                    ),
                ):
                    raise
                if not should_retry(policy, attempt=attempt, method_ok=method_ok, connection_error=True):
                    raise
                delay = retry_delay(policy, attempt=attempt, waited=waited, rand=self._rand)
                if delay is None:
                    raise
                log.debug(
                    "retrying %s %s after %s (attempt %d) in %.2fs",
                    request.method,
                    redact_url(request.url),
                    type(exc).__name__,
                    attempt,
                    delay,
                )
                await self._sleep(delay)
                waited += delay
                self.retries += 1
                continue
            status = response.status_code
            if status < 400 or not should_retry(
                policy, attempt=attempt, method_ok=method_ok, status_code=status
            ):
                return response
            delay = retry_delay(
                policy,
                attempt=attempt,
                retry_after=response.headers.get("retry-after"),
                waited=waited,
                rand=self._rand,
            )
            if delay is None:
                log.debug(
                    "not retrying %s %s: %d and the wait would exceed the policy's caps",
                    request.method,
                    redact_url(request.url),
                    status,
                )
                return response
            if status == 429:
                # Epic-scale rate limits apply to the client, not one request: pause everyone (must-have 10).
                self._gate.open_at = max(self._gate.open_at, self._clock() + delay)
            log.debug(
                "retrying %s %s after %d (attempt %d) in %.2fs",
                request.method,
                redact_url(request.url),
                status,
                attempt,
                delay,
            )
            await response.aread()
            await response.aclose()
            self.retries += 1
            if status == 429:
                waited += await self._wait_gate()
            else:
                await self._sleep(delay)
                waited += delay

    async def aclose(self) -> None:
        await self.next_transport.aclose()
