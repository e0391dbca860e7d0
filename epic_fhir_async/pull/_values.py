"""The values a pull hands out: items, failures, per-stream outcomes and progress snapshots."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio

from .._errors import AuthError, ConfigurationError, Unauthorized
from .._outcome import OperationOutcome
from ..auth._token_manager import is_token_failure
from ._queries import PullQuery

__all__ = ["PullFailure", "PullItem", "PullProgress", "StreamOutcomes"]

ProgressEvent = Literal["started", "page", "stream_done", "stream_failed", "finished"]


#: What a ``repr`` shows instead of a patient id: ids are patient data and reprs end up in logs and tracebacks.
MASKED_PATIENT = "<patient id masked>"


# not frozen: a frozen dataclass's __init__ costs ~60 % more, paid per resource
@dataclass(slots=True, repr=False)
class PullItem:
    """One resource of a pull and the stream it came from.

    ``query`` is the stream's label (``"Observation?category=laboratory"``: the search without the patient);
    ``resource`` is the dict the JSON parser produced (not copied, so cheap; do not mutate it if you keep
    references elsewhere). The ``repr`` shows the query and resource type only: no patient id, no content.
    """

    patient_id: str
    query: str
    resource: dict[str, Any]

    def __repr__(self) -> str:
        return f"PullItem(patient_id={MASKED_PATIENT}, query={self.query!r}, resource_type={self.resource_type!r})"

    @property
    def resource_type(self) -> str:
        return str(self.resource.get("resourceType", self.query.partition("?")[0]))


@dataclass(frozen=True, slots=True, repr=False)
class PullFailure:
    """A (patient, query) stream that failed in ``on_error="collect"`` mode; ``error`` is the real error.

    The ``repr`` names the error's type only (its text may hold a search URL with the patient id).
    """

    patient_id: str
    query: str
    error: Exception

    def __repr__(self) -> str:
        return f"PullFailure(patient_id={MASKED_PATIENT}, query={self.query!r}, error={type(self.error).__name__})"


@dataclass(frozen=True, slots=True, repr=False)
class StreamOutcomes:
    """Epic's ``search.mode == "outcome"`` OperationOutcomes (warnings such as 4101, 59204) of one stream.

    Equal outcomes (same issues) of different streams are one shared object, whose ``raw`` is the first
    stream's: Epic repeats the same warnings on nearly every searchset, and a copy per stream would make a
    large pull's memory grow with its patient count.

    The ``repr`` counts the outcomes (their diagnostics are free text that can describe the patient).
    """

    patient_id: str
    query: str
    outcomes: tuple[OperationOutcome, ...]

    def __repr__(self) -> str:
        return f"StreamOutcomes(patient_id={MASKED_PATIENT}, query={self.query!r}, outcomes={len(self.outcomes)})"


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


# -- internal: what the pull engine needs and passes around ------------------------------------------
class _Page(Protocol):
    @property
    def resources(self) -> Sequence[dict[str, Any]]: ...
    @property
    def outcomes(self) -> Sequence[OperationOutcome]: ...


class _Search(Protocol):
    def pages(self) -> AsyncIterator[Any]: ...


class Searcher(Protocol):
    """What a pull needs from the client: ``search(type, **params)`` returning a query with ``.pages()``."""

    def search(self, resource_type: str, /, **params: Any) -> Any: ...


@dataclass(slots=True, repr=False)  # no repr: it holds a patient id and resources
class Chunk:
    """One message from a stream: a page of resources, or its end (``last``, with outcomes or an error)."""

    patient_id: str
    query: str
    resources: Sequence[dict[str, Any]]
    last: bool = False
    outcomes: tuple[OperationOutcome, ...] = ()
    error: Exception | None = None


@dataclass(slots=True, repr=False)  # no repr: it holds a patient id
class StreamState:
    """One (patient, query) stream between its pages: its page iterator (opened by the first step) and the
    outcomes gathered so far. Advanced one page at a time, by one task or by a new task each round."""

    patient_id: str
    query: PullQuery
    pages: AsyncIterator[Any] | None = None
    outcomes: list[OperationOutcome] = field(default_factory=list)


async def close_pages(stream: StreamState) -> None:
    """Close a stream's page iterator now, not whenever it is collected (an async generator of pages left at
    a yield); shielded, it only runs its finally blocks. The stream is not stepped again afterwards."""
    pages, stream.pages = stream.pages, None
    aclose = getattr(pages, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()


@dataclass(slots=True)
class Counters:
    streams_total: int | None = None
    streams_done: int = 0
    streams_failed: int = 0
    streams_skipped: int = 0
    patients_seen: int = 0
    patients_done: int = 0
    pages: int = 0
    resources: int = 0
    # patient -> streams not finished (in flight only); keyed by patient id, so kept out of the repr
    remaining: dict[str, int] = field(default_factory=dict, repr=False)

    def snapshot(self, event: ProgressEvent, retries: int | None, elapsed: float) -> PullProgress:
        return PullProgress(
            event=event,
            streams_total=self.streams_total,
            streams_done=self.streams_done,
            streams_failed=self.streams_failed,
            streams_skipped=self.streams_skipped,
            patients_seen=self.patients_seen,
            patients_done=self.patients_done,
            pages=self.pages,
            resources=self.resources,
            retries=retries,
            elapsed=elapsed,
        )


def stops_everything(error: BaseException) -> bool:
    """Whether a stream's error is about the client, not its patient or query: fatal even in collect mode.

    Credentials or setup that are wrong (:class:`AuthError`: :class:`TokenRequestError`,
    :class:`ConfigurationError`, a launch that needs re-authorisation), a 401 that outlived the auth flow's
    one refresh and replay (Epic's 401 means the token is invalid, docs/epic-notes.md §3.7, so every other
    request gets it too), and any error of getting a token (an unreachable token endpoint or SMART
    discovery). Going on would only repeat it for every stream, each asking for a token of its own.
    """
    cause: BaseException | None = error
    for _ in range(8):  # the error or what it was raised from; bounded, a cause chain can loop
        if cause is None:
            break
        if isinstance(cause, AuthError | ConfigurationError | Unauthorized):
            return True
        cause = cause.__cause__
    return is_token_failure(error)
