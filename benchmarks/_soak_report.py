"""The soak's report and its leak probes (sockets, tasks, peak memory)."""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import sniffio

#: Sandbox counters that are injected faults, in the order the table shows them.
FAULT_KINDS = (
    ("faults:error", "server errors (5xx)"),
    ("faults:rate_limited", "429 + Retry-After"),
    ("faults:drop", "connections cut mid-body"),
    ("faults:latency_spike", "latency spikes"),
    ("token_flakes", "token flakes (bare 400)"),
    ("sessions_expired", "expired paging sessions (4113)"),
)


@dataclasses.dataclass
class SoakReport:
    """Counters of one soak; :attr:`ok` when nothing was lost, duplicated, unexpected or leaked."""

    seconds: float
    served: bool
    elapsed: float = 0.0
    rounds: Counter[str] = dataclasses.field(default_factory=Counter)
    stats: dict[str, int] = dataclasses.field(default_factory=dict)
    retries: int = 0
    token_fetches: int = 0
    expiry_sweeps: int = 0
    expected: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    leaked_sockets: int = 0
    leaked_tasks: int = 0
    peak_rss_mb: float = 0.0
    log_records: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def faults(self) -> dict[str, int]:
        return {label: self.stats.get(key, 0) for key, label in FAULT_KINDS}

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.unexpected
            or self.leaked_sockets
            or self.leaked_tasks
            or self.errors
        )

    def table(self) -> str:
        s = self.stats
        rows: list[tuple[str, str]] = [
            ("transport", "sockets on 127.0.0.1" if self.served else "in-process"),
            ("elapsed", f"{self.elapsed:.1f} s (asked {self.seconds:.0f} s)"),
            ("rounds", ", ".join(f"{k} {v}" for k, v in sorted(self.rounds.items())) or "0"),
            ("requests (FHIR)", f"{s.get('fhir_requests', 0)}"),
            ("requests (token)", f"{s.get('token_requests', 0)}"),
            ("faults injected", f"{sum(self.faults.values())}"),
            *((f"  {label}", f"{n}") for label, n in self.faults.items()),
            ("  session expiry sweeps", f"{self.expiry_sweeps}"),
            ("  latency on every request", f"{s.get('faults:latency', 0)}"),
            ("retries (transport)", f"{self.retries}"),
            ("token fetches", f"{self.token_fetches}"),
            ("SDK log records", ", ".join(f"{k} {v}" for k, v in sorted(self.log_records.items())) or "none"),
            ("resources expected", f"{self.expected}"),
            ("resources received", f"{self.received}"),
            ("lost", f"{self.lost}"),
            ("duplicated", f"{self.duplicated}"),
            ("unexpected", f"{self.unexpected}"),
            ("open connections at end", f"{self.leaked_sockets}"),
            ("open tasks at end", f"{self.leaked_tasks}"),
            ("peak memory (RSS, client + server)", f"{self.peak_rss_mb:.0f} MB"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines += [f"error: {e}" for e in self.errors[:20]]
        lines.append(("PASS" if self.ok else "FAIL") + ": lost, duplicated, unexpected and leaked must be 0")
        return "\n".join(lines)


def open_sockets() -> int:
    """Sockets this process holds (Linux ``/proc``; 0 elsewhere, where the check is skipped)."""
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return 0
    count = 0
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, name)).startswith("socket:"):
                count += 1
        except OSError:
            continue  # closed between listdir and readlink
    return count


def running_tasks() -> int:
    """Tasks alive in the current event loop (asyncio or trio), the caller's included."""
    if sniffio.current_async_library() == "trio":
        import trio

        return int(trio.lowlevel.current_statistics().tasks_living)
    import asyncio

    return len(asyncio.all_tasks())


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (``ru_maxrss`` is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class _Counting(logging.Handler):
    def __init__(self, counts: Counter[str]) -> None:
        super().__init__(logging.DEBUG)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1


@contextmanager
def count_sdk_logs(counts: Counter[str]) -> Iterator[None]:
    """Count the SDK's log records by level (INFO and up) instead of printing them."""
    logger = logging.getLogger("epic_fhir_async")
    handler, level, propagate = _Counting(counts), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
