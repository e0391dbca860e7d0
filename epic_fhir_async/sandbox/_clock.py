"""The sandbox's clock: wall-clock seconds that tests can move forward.

Token expiry, JWT ``exp``/``nbf`` windows, paging-session expiry and bulk job timing all read this clock,
so a test can expire a token or a session instantly with :meth:`SandboxClock.advance` instead of waiting
out Epic's real lifetimes (an hour for a token, docs/epic-notes.md §1.6).
"""

from __future__ import annotations

import time

__all__ = ["SandboxClock"]


class SandboxClock:
    """Real time plus an offset that :meth:`advance` moves forward; ``frozen_at`` stops it for exact tests."""

    def __init__(self, *, frozen_at: float | None = None) -> None:
        self._offset = 0.0
        self._frozen_at = frozen_at

    def now(self) -> float:
        """Seconds since the epoch, as the sandbox sees them."""
        base = self._frozen_at if self._frozen_at is not None else time.time()
        return base + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        self._offset += seconds
