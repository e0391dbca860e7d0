"""Fault injection for FHIR requests: rate limit, errors, dropped connections (all off by default).

None of them is documented Epic behaviour (Epic documents no rate limit, docs/epic-notes.md §1.8): they let
tests exercise a client's retries. Every injected fault is counted in the sandbox stats as ``faults:<kind>``.
Randomness comes from a seeded ``random.Random`` so a fault sequence is reproducible for a given seed and
request order.
"""

from __future__ import annotations

import collections
import email.utils
import math
import random

from ._clock import SandboxClock
from ._config import SandboxFaults
from ._http import Response, outcome_issue, outcome_response

__all__ = ["FaultInjector"]

_GATEWAY = (
    b"<html><head><title>{status} Error</title></head><body><h1>{status} Error</h1>"
    b"<p>The server is temporarily unable to service your request.</p></body></html>"
)


class FaultInjector:
    """Decides, per FHIR request, whether to answer 429, a 5xx, or to cut the response short."""

    def __init__(
        self, faults: SandboxFaults, *, clock: SandboxClock, stats: collections.Counter[str], seed: int
    ) -> None:
        self.faults = faults
        self.clock = clock
        self.stats = stats
        self._rng = random.Random(f"faults-{seed}")  # noqa: S311 - reproducible faults, not crypto
        self._window: collections.deque[float] = collections.deque()

    def before(self) -> Response | None:
        """A 429 or 5xx answer instead of the real one, or None to proceed."""
        limit = self.faults.rate_limit_rps
        if limit > 0:
            now = self.clock.now()
            while self._window and self._window[0] <= now - 1.0:
                self._window.popleft()
            if len(self._window) >= limit:
                self.stats["faults:rate_limited"] += 1
                return self._too_many(now)
            self._window.append(now)
        if self.faults.error_rate > 0 and self._rng.random() < self.faults.error_rate:
            status = self._rng.choice(self.faults.error_statuses or (500,))
            self.stats["faults:error"] += 1
            self.stats[f"faults:error:{status}"] += 1
            if status == 500:
                issue = outcome_issue(
                    "fatal", "exception", "59177", "An unexpected internal error has occurred."
                )
                return outcome_response(500, issue)
            body = _GATEWAY.replace(b"{status}", str(status).encode())
            return Response(status, [("content-type", "text/html")], body)
        return None

    def spike(self) -> float:
        """Seconds of an injected latency spike for this request (0.0 for most requests)."""
        rate = self.faults.latency_spike_rate
        if rate > 0 and self.faults.latency_spike > 0 and self._rng.random() < rate:
            self.stats["faults:latency_spike"] += 1
            return self.faults.latency_spike
        return 0.0

    def _too_many(self, now: float) -> Response:
        oldest = self._window[0] if self._window else now
        seconds = max(self.faults.retry_after, math.ceil(oldest + 1.0 - now))
        if self.faults.retry_after_http_date:
            value = email.utils.formatdate(now + seconds, usegmt=True)
        else:
            value = str(math.ceil(seconds))
        headers = [("content-type", "text/plain; charset=utf-8"), ("retry-after", value)]
        return Response(429, headers, b"Too Many Requests")

    def after(self, response: Response) -> None:
        """Maybe mark ``response`` to be cut mid-body (``drop_after`` bytes sent, then the connection dies)."""
        if self.faults.drop_rate > 0 and self._rng.random() < self.faults.drop_rate:
            if response.stream is None and not response.body:
                return  # nothing to cut (a 202): served, its Content-Length 0 completes it before any drop
            self.stats["faults:drop"] += 1
            # Half the body; streamed bodies (bulk files) are cut after their first 32 KiB (or at their end).
            size = len(response.body)
            response.drop_after = max(1, size // 2) if response.stream is None else 32768
