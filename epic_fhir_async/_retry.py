"""The one retry vocabulary of the SDK (pure, no I/O): :class:`RetryPolicy`, ``should_retry``, ``retry_delay``
and :class:`Retrying`, the state of one logical request's attempts.

Every loop that repeats a request uses it: the retrying transport under every FHIR request
(:class:`~epic_fhir_async._http.RetryTransport`, with the client's policy), the token request, the bulk
kick-off, bulk status polling and bulk file reads (with the policies named at the bottom of this module, so
all the numbers are in one place). ``Retry-After`` is read once, by :func:`._headers.parse_retry_after`
(delta-seconds, HTTP-date, epoch seconds or milliseconds), and capped by each policy's ``max_retry_after``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeGuard

from ._errors import ConfigurationError
from ._headers import parse_retry_after

__all__ = [
    "BULK_FILE_RETRY",
    "DEADLINE",
    "KICKOFF_RETRY",
    "NO_RETRY",
    "READ_BODY",
    "RETRY_SAFE",
    "STATUS_POLL_RETRY",
    "TOKEN_RETRY",
    "RetryPolicy",
    "Retrying",
    "is_retryable_method",
    "retry_delay",
    "should_retry",
    "total_bound",
]

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
#: Request extension carrying the deadline of one attempt in seconds (the client's ``timeout``): connect, send,
#: the response head (any ``1xx`` lines included) and, when the body is read in the loop (:data:`READ_BODY`),
#: the whole body. httpx's own timeouts apply to each socket operation, so a server sending one byte a second
#: would otherwise never time out.
DEADLINE = "epic_fhir_async.deadline"
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries; every duration in seconds.

    ``max_attempts`` counts the first try (1 disables retries). Backoff is ``backoff_base * 2**n`` capped at
    ``backoff_max``, with up to ``jitter`` (fraction) of it randomised. The sum of waits for one request (backoff,
    ``Retry-After`` and pauses behind the client's shared 429 gate) never exceeds ``max_total_wait``. A
    ``Retry-After`` above ``max_retry_after`` is not slept on: the response is returned and the client raises
    :class:`~epic_fhir_async.RateLimited` (servers have sent epoch timestamps).

    Each attempt has the client's ``timeout`` as its deadline, so one request of the client ends within
    ``max_attempts * timeout + max_total_wait`` seconds (:func:`total_bound`; 5 * 60 + 120 = 420 s by default).
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


def total_bound(policy: RetryPolicy, timeout: float) -> float:
    """The longest one request can take through the retrying transport: every attempt up to its deadline
    (``timeout``) plus every wait the policy allows."""
    return policy.max_attempts * timeout + policy.max_total_wait


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
    retry_after: str | float | None = None,
    waited: float = 0.0,
    rand: Callable[[], float] = random.random,
    now: float | None = None,
) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` when the wait would break a cap.

    A ``Retry-After`` (the header's text, or seconds already parsed from it) wins over backoff; above
    ``max_retry_after`` it gives ``None``; zero (or an instant already past) gives the backoff, never 0. Any wait that would push the total past ``max_total_wait`` gives
    ``None``.
    """
    server = (
        float(retry_after)
        if isinstance(retry_after, (int, float))
        else parse_retry_after(retry_after, now=now)
    )
    if server is not None and server > policy.max_retry_after:
        return None
    if server:  # a Retry-After of 0, or an instant already past, is no reason to retry at once: back off
        delay = server
    else:
        base = min(policy.backoff_max, policy.backoff_base * (2 ** max(0, attempt - 1)))
        delay = base * (1.0 - policy.jitter * rand())
    if waited + delay > policy.max_total_wait:
        return None
    return delay


class Retrying:
    """The attempts of one logical request under ``policy``: count them, and ask for the wait before the next.

    ::

        retrying = Retrying(policy)
        while True:
            retrying.attempt += 1
            try:
                return await send()
            except Transient as exc:
                delay = retrying.next_delay(retry_after=exc.retry_after)
                if delay is None:
                    raise
                await anyio.sleep(delay)
    """

    __slots__ = ("_rand", "attempt", "policy", "waited")

    def __init__(self, policy: RetryPolicy, *, rand: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self.attempt = 0
        self.waited = 0.0
        self._rand = rand

    def next_delay(self, *, retry_after: str | float | None = None) -> float | None:
        """Seconds to wait before another attempt after a transient failure of the current one, or ``None``
        when the policy says stop (attempts used up, a ``Retry-After`` over the cap, the total wait spent)."""
        if self.attempt >= self.policy.max_attempts:
            return None
        delay = retry_delay(
            self.policy, attempt=self.attempt, retry_after=retry_after, waited=self.waited, rand=self._rand
        )
        if delay is not None:
            self.waited += delay
        return delay


# -- the policies of the SDK's own loops (the client's FHIR requests use the policy passed to the client) --

#: A token request is tried at most twice, always with a fresh form (a replayed assertion would reuse its
#: ``jti``, which Epic rejects): one retry after 1 s, or the server's ``Retry-After`` up to 10 s.
TOKEN_RETRY = RetryPolicy(
    max_attempts=2, backoff_base=1.0, backoff_max=1.0, jitter=0.0, max_total_wait=10.0, max_retry_after=10.0
)
#: The bulk kick-off is sent at most 4 times (1, 2, 4 s apart, or after ``Retry-After`` up to 60 s), and only
#: after failures where the server most likely started nothing.
KICKOFF_RETRY = RetryPolicy(
    max_attempts=4, backoff_base=1.0, backoff_max=8.0, jitter=0.0, max_total_wait=180.0, max_retry_after=60.0
)
#: Bulk status polling tolerates 8 transient failures in a row (5xx, 429, connection); between them it waits
#: ``Retry-After`` (up to an hour: exports run for hours) or the job's poll cadence.
STATUS_POLL_RETRY = RetryPolicy(
    max_attempts=9,
    backoff_base=2.0,
    backoff_max=600.0,
    jitter=0.0,
    max_total_wait=float("inf"),
    max_retry_after=3600.0,
)
#: A bulk file whose connection drops mid-body is requested again up to 3 times (lines already handed out are
#: skipped; a download to disk starts the file again).
BULK_FILE_RETRY = RetryPolicy(max_attempts=4, backoff_base=0.25, backoff_max=4.0, max_total_wait=60.0)
