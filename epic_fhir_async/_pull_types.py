"""The values a pull hands out: items, failures, per-stream outcomes and progress snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ._outcome import OperationOutcome

__all__ = ["PullFailure", "PullItem", "PullProgress", "StreamOutcomes"]

ProgressEvent = Literal["started", "page", "stream_done", "stream_failed", "finished"]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~60 % more, paid per resource
class PullItem:
    """One resource of a pull and the stream it came from.

    ``query`` is the stream's label (``"Observation?category=laboratory"``: the search without the patient);
    ``resource`` is the dict the JSON parser produced (not copied, so cheap; do not mutate it if you keep
    references elsewhere).
    """

    patient_id: str
    query: str
    resource: dict[str, Any]

    @property
    def resource_type(self) -> str:
        return str(self.resource.get("resourceType", self.query.partition("?")[0]))


@dataclass(frozen=True, slots=True)
class PullFailure:
    """A (patient, query) stream that failed in ``on_error="collect"`` mode; ``error`` is the real error."""

    patient_id: str
    query: str
    error: Exception


@dataclass(frozen=True, slots=True)
class StreamOutcomes:
    """Epic's ``search.mode == "outcome"`` OperationOutcomes (warnings such as 4101, 59204) of one stream."""

    patient_id: str
    query: str
    outcomes: tuple[OperationOutcome, ...]


@dataclass(frozen=True, slots=True)
class PullProgress:
    """A snapshot of a pull's counters, passed to the ``progress`` callback on each event.

    ``streams_total`` is known up front when ``patients`` has a length (``len()`` or ``__length_hint__``),
    and exactly once every patient id has been read. ``streams_done`` counts streams whose resources were
    all consumed; ``streams_skipped`` those a checkpoint had already completed. ``pages`` and ``resources``
    count what was fetched (so they can run ahead of the consumer by the buffer). ``retries`` counts
    retried requests when the client's transport reports them, else ``None``. ``elapsed`` is in seconds.
    """

    event: ProgressEvent
    streams_total: int | None
    streams_done: int
    streams_failed: int
    streams_skipped: int
    patients_seen: int
    patients_done: int
    pages: int
    resources: int
    retries: int | None
    elapsed: float

    @property
    def streams_finished(self) -> int:
        """Done, failed and skipped streams together: the numerator of a progress bar."""
        return self.streams_done + self.streams_failed + self.streams_skipped
