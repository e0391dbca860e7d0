"""Concurrent pulls: many (patient, query) searches fanned out over a task group, merged into one stream.

Shape (why an async context manager and not an async generator): the fan-out needs a task group, and anyio
forbids yielding from an async generator while a task group is open inside it (a ``break`` in the caller
would leave the group open in a half-closed generator, finalised later in another task). So the pull is an
object that *owns* its task group between ``__aenter__`` and ``__aexit__``::

    async with client.pull(patients, ["Condition", "Observation"]) as stream:
        async for item in stream:          # PullItem(patient_id, query, resource)
            ...

Leaving the block (``break``, an exception, the caller being cancelled) cancels every request in flight
and waits for the tasks to finish: no task outlives the ``async with``. Iterated without entering it
(``async for item in client.pull(...)``), the pull runs in rounds inside ``__anext__`` instead
(:mod:`._pull_rounds`): nothing runs between items, at the price of not overlapping fetching with the
consumer's work. Both modes advance a stream with the one :meth:`PullStream._step`.

Inside, one coordinator task reads patient ids lazily and starts one task per (patient, query) stream only
when the ``CapacityLimiter`` grants a slot, so at most ``concurrency`` searches (each one request at a time)
run and the patient iterable is never materialised. Pages travel to the consumer through a bounded memory
object stream of ``buffer`` pages: a slow consumer blocks the producers (backpressure), so at most
``buffer + concurrency`` pages are held ahead of the consumer however many patients are pulled.
"""

from __future__ import annotations

import logging
import math
import operator
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import aclosing
from types import TracebackType
from typing import Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._config import LOGGER_NAME
from .._errors import ConfigurationError, PullError
from .._outcome import OperationOutcome
from ._checkpoint import StreamCheckpoint
from ._queries import EpicExpansion, PatientIds, PullQuery, UniqueIds, expand_queries
from ._values import (
    Chunk,
    Counters,
    ProgressEvent,
    PullFailure,
    PullItem,
    PullProgress,
    Searcher,
    StreamOutcomes,
    StreamState,
    close_pages,
    stops_everything,
)

__all__ = ["PullStream", "Rounds", "pull"]

logger = logging.getLogger(f"{LOGGER_NAME}.pull")

#: Distinct outcomes shared between streams; past it, each stream keeps its own (a server sending unique ones).
_OUTCOME_KINDS = 256

OnError = Literal["raise", "collect"]


class PullStream:
    """A pull: ``async with`` it, then ``async for item in stream``; or a bare ``async for item in stream``.

    Inside ``async with``, up to ``concurrency`` streams run in tasks while you consume and ``buffer`` pages
    wait for you. A bare ``async for`` fetches in rounds within each step of the loop (up to ``concurrency``
    pages at once, held until handed out) and runs nothing between items, so a ``break`` needs no cleanup;
    :meth:`aclose` also closes an async iterable of patient ids. Prefer ``async with`` for throughput.

    ``failures`` lists the failed streams (``on_error="collect"``); ``outcomes`` the Epic warnings per
    stream (when ``keep_outcomes``); ``progress`` is the latest counter snapshot.

    Errors: a stream's own failure (404, a 403 for one patient, an OperationOutcome error, a 5xx after the
    retries) raises :class:`PullError` naming its ``patient_id`` and ``query`` at once with
    ``on_error="raise"``, and is appended to ``failures`` with ``on_error="collect"``. A failure that is not
    about one patient (the credentials or setup: :class:`AuthError` such as :class:`TokenRequestError` or
    :class:`ConfigurationError`, a token endpoint or SMART discovery that cannot be reached, a 401 after the
    auth's refresh and replay) ends the pull in both modes: every stream is cancelled, the pages already
    fetched are still handed out (and finished streams checkpointed as usual), then iteration raises
    :class:`PullError` with ``patient_id=None`` and the real error as ``__cause__``. The failure costs one
    token round however many streams wait (:class:`TokenManager`): one token request, or two when the answer
    looks transient (5xx, no connection, Epic's bare ``invalid_client``) and is retried once; one discovery.
    Patient ids are pulled once each: repeats in ``patients`` are skipped (first-seen order is kept).
    The ``repr`` shows counts and query labels only, never a patient id or a resource.
    """

    def __init__(
        self,
        client: Searcher,
        patients: PatientIds,
        queries: tuple[PullQuery, ...],
        *,
        limiter: anyio.CapacityLimiter,
        on_error: OnError,
        checkpoint: StreamCheckpoint | None,
        progress: Callable[[PullProgress], object] | None,
        buffer: int,
        keep_outcomes: bool,
        retries: Callable[[], int | None] | None,
    ) -> None:
        self._client = client
        self._patients = patients
        self.queries = queries
        self._limiter = limiter
        self._on_error = on_error
        self._checkpoint = checkpoint
        self._progress_cb = progress
        self._buffer = buffer
        self._keep_outcomes = keep_outcomes
        self._retries = retries
        self.failures: list[PullFailure] = []
        self.outcomes: list[StreamOutcomes] = []
        # Epic ends nearly every clinical searchset with the same warnings (docs/epic-notes.md §3.6): equal
        # outcomes are kept once and shared by the streams, so ``outcomes`` grows by a few references per
        # stream instead of a parsed copy each (~3 KB): a 100k-patient pull stays flat.
        self._outcome_kinds: dict[OperationOutcome, OperationOutcome] = {}
        self._c = Counters()
        hint = operator.length_hint(patients, -1)  # lists, tuples, or any object with __length_hint__
        if hint >= 0:
            self._c.streams_total = hint * len(queries)
        self._tg: anyio.abc.TaskGroup | None = None
        self._streams_scope: anyio.CancelScope | None = None
        self._send: MemoryObjectSendStream[Chunk] | None = None
        self._receive: MemoryObjectReceiveStream[Chunk] | None = None
        self._chunk: Chunk | None = None
        self._index = 0
        self._fatal: BaseException | None = None
        self._drain = False  # deliver the pages already fetched before raising _fatal
        self._held: set[object] = set()
        self._started_at = 0.0
        self._state: Literal["new", "running", "rounds", "closed"] = "new"
        self._rounds: Rounds | None = None

    def __repr__(self) -> str:
        c = self._c
        queries = ", ".join(q.label for q in self.queries)
        return (
            f"PullStream(state={self._state!r}, queries=[{queries}], patients_seen={c.patients_seen}, "
            f"streams_done={c.streams_done}, streams_failed={c.streams_failed}, resources={c.resources}, "
            f"failures={len(self.failures)})"
        )

    # -- lifecycle -------------------------------------------------------------------------------------
    async def __aenter__(self) -> PullStream:
        if self._state != "new":
            raise RuntimeError("a PullStream can be entered only once")
        self._send, self._receive = anyio.create_memory_object_stream[Chunk](self._buffer)
        self._started_at = anyio.current_time()
        self._emit("started")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = "running"
        tg.start_soon(self._produce)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg, self._tg = self._tg, None
        self._state = "closed"
        if tg is None:
            return None
        tg.cancel_scope.cancel()
        if self._receive is not None:
            self._receive.close()
        # Hand the task group only a cancellation (so it can absorb its own); any other exception of the body
        # propagates unwrapped instead of inside an ExceptionGroup.
        cancelled = exc if isinstance(exc, anyio.get_cancelled_exc_class()) else None
        try:
            await tg.__aexit__(type(cancelled) if cancelled else None, cancelled, tb if cancelled else None)
        finally:
            if self._send is not None:
                self._send.close()  # normally closed by the coordinator; not if it was cancelled unstarted
        return None

    # -- consumer side ---------------------------------------------------------------------------------
    def __aiter__(self) -> PullStream:
        if self._state == "new":
            # A bare ``async for``: no context owns a task group, so the pull runs in rounds within __anext__
            # (see _pull_rounds); nothing runs between items.
            self._rounds = Rounds(self)
            self._state = "rounds"
            self._started_at = anyio.current_time()
            self._emit("started")
        return self

    async def __anext__(self) -> PullItem:
        while True:
            if self._fatal is not None and not self._drain:
                if self._rounds is not None:
                    await self._rounds.aclose()
                raise self._fatal
            chunk = self._chunk
            if chunk is not None:
                index = self._index
                if index < len(chunk.resources):
                    self._index = index + 1
                    return PullItem(chunk.patient_id, chunk.query, chunk.resources[index])
                self._chunk = None
                if chunk.last:
                    await self._finish_stream(chunk)
                del chunk  # not held across the wait below: freed now, while its objects are still cached
            if self._state == "running" and self._receive is not None:
                try:
                    self._chunk = await self._receive.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    self._chunk = None
            elif self._state == "rounds" and self._rounds is not None:
                self._chunk = await self._rounds.next_chunk()
            else:
                raise StopAsyncIteration
            if self._chunk is None:  # all producers are gone (outside the except: keep the error's own cause)
                if self._rounds is not None:
                    await self._rounds.aclose()
                if self._fatal is not None:
                    raise self._fatal
                self._state = "closed"
                self._emit("finished")
                raise StopAsyncIteration
            self._index = 0

    async def aclose(self) -> None:
        """End a bare ``async for`` early: close its page iterators and an async iterable of patient ids.

        Between items nothing runs, so a ``break`` alone leaves no task and sends no request; ``aclose()`` (or
        ``contextlib.aclosing(client.pull(...))``) also closes your async iterable of ids at once. Inside
        ``async with`` it does nothing: leaving the block ends the pull.
        """
        if self._state == "running":
            return
        self._state = "closed"
        self._chunk = None  # its stream is not finished: no checkpoint for it
        if self._rounds is not None:
            await self._rounds.aclose()

    async def _finish_stream(self, chunk: Chunk) -> None:
        # Runs in the consumer's task after the stream's last resource was consumed: the point where a
        # checkpoint may record the stream as complete.
        c = self._c
        if chunk.outcomes and self._keep_outcomes:
            self.outcomes.append(StreamOutcomes(chunk.patient_id, chunk.query, chunk.outcomes))
        if chunk.error is not None:
            self.failures.append(PullFailure(chunk.patient_id, chunk.query, chunk.error))
            c.streams_failed += 1
            if self._checkpoint is not None:
                await self._checkpoint.mark_failed(chunk.patient_id, chunk.query)
            event: ProgressEvent = "stream_failed"
        else:
            if self._checkpoint is not None:
                await self._checkpoint.mark_complete(chunk.patient_id, chunk.query)
            c.streams_done += 1
            event = "stream_done"
        left = c.remaining.get(chunk.patient_id, 1) - 1
        if left <= 0:
            c.remaining.pop(chunk.patient_id, None)
            c.patients_done += 1
        else:
            c.remaining[chunk.patient_id] = left
        self._emit(event)

    # -- producer side ---------------------------------------------------------------------------------
    async def _produce(self) -> None:
        assert self._send is not None
        send = self._send
        c = self._c
        try:
            async with anyio.create_task_group() as streams:
                self._streams_scope = streams.cancel_scope
                try:
                    async with aclosing(UniqueIds(self._patients)) as patient_ids:
                        async for patient_id in patient_ids:
                            for query in self._admit(patient_id):
                                token = object()
                                await self._limiter.acquire_on_behalf_of(token)
                                self._held.add(token)
                                streams.start_soon(self._run_stream, patient_id, query, token)
                except Exception as exc:  # the patients iterable failed, or gave a bad id
                    self._set_fatal(exc)
                c.streams_total = c.patients_seen * len(self.queries)
        finally:
            for token in self._held:  # tasks cancelled before they ever ran
                self._limiter.release_on_behalf_of(token)
            self._held.clear()
            send.close()

    def _admit(self, patient_id: str) -> list[PullQuery]:
        """Count a new patient and return its streams still to pull (the checkpoint's completed ones skipped)."""
        c = self._c
        c.patients_seen += 1
        checkpoint = self._checkpoint
        todo = [
            q for q in self.queries if checkpoint is None or not checkpoint.is_complete(patient_id, q.label)
        ]
        c.streams_skipped += len(self.queries) - len(todo)
        if not todo:
            c.patients_done += 1
        else:
            c.remaining[patient_id] = c.remaining.get(patient_id, 0) + len(todo)
        return todo

    async def _run_stream(self, patient_id: str, query: PullQuery, token: object) -> None:
        # The `async with` mode: one task walks the whole stream, each page sent to the consumer's buffer.
        stream = StreamState(patient_id, query)
        try:
            while True:
                chunk = await self._step(stream)
                if chunk is None:
                    break
                last = chunk.last
                if chunk.resources or last:
                    await self._deliver(chunk)
                # Let go of the page now: held here until the next page arrives, the consumer's last reference
                # is not the last one, and its thousands of objects are freed after the next parse, cold in
                # the cache (measured: a fifth of the pull's CPU beyond the hand-written loop).
                del chunk
                if last:
                    break
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the consumer left: nothing to deliver to
        finally:
            await close_pages(stream)
            self._held.discard(token)
            self._limiter.release_on_behalf_of(token)

    async def _step(self, stream: StreamState) -> Chunk | None:
        """Fetch the next page of ``stream``: a chunk of its resources, or its end (``last``, with the outcomes
        and a collected error), or ``None`` when its error ended the whole pull. Both modes advance streams
        with this alone, so errors, outcomes and counters are the same in both."""
        query = stream.query
        failed: Exception | None = None
        try:
            pages = stream.pages
            if pages is None:
                search = self._client.search(query.resource_type, **query.params_for(stream.patient_id))
                pages = stream.pages = aiter(search.pages())
            page = await pages.__anext__()
            resources = page.resources  # read here: a page is parsed when first read, and may fail then
        except StopAsyncIteration:
            pass
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise
        except Exception as exc:
            # Decided before the awaits below, so a setup failure cancels the other streams before they
            # start a token request of their own.
            if not self._collects(exc, stream.patient_id, query.label):
                await close_pages(stream)
                return None
            failed = exc
        else:
            c = self._c
            c.pages += 1
            c.resources += len(resources)
            if page.outcomes:
                stream.outcomes.extend(map(self._shared, page.outcomes))
            self._emit("page")
            return Chunk(stream.patient_id, query.label, resources)
        await close_pages(stream)
        return Chunk(
            stream.patient_id, query.label, (), last=True, outcomes=tuple(stream.outcomes), error=failed
        )

    def _shared(self, outcome: OperationOutcome) -> OperationOutcome:
        """The equal outcome already kept (equality ignores ``raw``), else ``outcome``; a bounded table."""
        kinds = self._outcome_kinds
        known = kinds.get(outcome)
        if known is not None:
            return known
        if len(kinds) < _OUTCOME_KINDS:
            kinds[outcome] = outcome
        return outcome

    async def _deliver(self, chunk: Chunk) -> None:
        # Shielded: what was fetched reaches the buffer even while a setup failure cancels the streams, so
        # the drain hands it out (and a finished stream is checkpointed) instead of dropping it. It cannot
        # hang: the buffer drains, or leaving the ``async with`` closes it (BrokenResourceError).
        assert self._send is not None
        with anyio.CancelScope(shield=True):
            await self._send.send(chunk)

    def _collects(self, exc: Exception, patient_id: str, label: str) -> bool:
        """Whether a stream's error is collected as a :class:`PullFailure`; else it ends the pull."""
        if stops_everything(exc):
            if self._fatal is None:
                logger.warning("pull stopped: %s is not about one patient", type(exc).__name__)
            error = PullError(
                f"pull stopped: {type(exc).__name__} is about the client's credentials or setup (token "
                f"endpoint, SMART discovery, a token the server refuses), not one patient, so no stream can "
                f"go on; fix that and run the pull again: {exc}",
                patient_id=None,
                query=label,
            )
            error.__cause__ = exc
            self._set_fatal(error, drain=True)
            return False
        if self._on_error == "raise":
            error = PullError(
                f"pull stream {label} failed for one patient (see .patient_id): {type(exc).__name__}: {exc}",
                patient_id=patient_id,
                query=label,
            )
            error.__cause__ = exc
            self._set_fatal(error)
            return False
        logger.warning("pull stream %s failed: %s", label, type(exc).__name__)
        return True

    # -- shared ----------------------------------------------------------------------------------------
    def _set_fatal(self, error: BaseException, *, drain: bool = False) -> None:
        """End the pull with ``error``: at once, or (``drain``) after the pages already fetched are consumed."""
        if self._fatal is None:
            self._fatal = error
            self._drain = drain
        if self._streams_scope is not None:
            self._streams_scope.cancel()

    @property
    def progress(self) -> PullProgress:
        """The current counters (event ``"page"`` when read outside a callback)."""
        return self._snapshot("page")

    def _snapshot(self, event: ProgressEvent) -> PullProgress:
        elapsed = anyio.current_time() - self._started_at if self._started_at else 0.0
        return self._c.snapshot(event, self._retries() if self._retries is not None else None, elapsed)

    def _emit(self, event: ProgressEvent) -> None:
        if self._progress_cb is None:
            return
        try:
            self._progress_cb(self._snapshot(event))
        except Exception as exc:  # a broken progress callback ends the pull visibly, not silently
            self._set_fatal(exc)
            if event in {"stream_done", "stream_failed", "finished"}:
                raise


def pull(
    client: Searcher,
    patients: PatientIds,
    types: Iterable[str] | str,
    *,
    concurrency: int | anyio.CapacityLimiter = 8,
    expand: bool | EpicExpansion = True,
    on_error: OnError = "raise",
    checkpoint: StreamCheckpoint | None = None,
    progress: Callable[[PullProgress], object] | None = None,
    buffer: int = 16,
    keep_outcomes: bool = True,
    retries: Callable[[], int | None] | None = None,
) -> PullStream:
    """Pull ``types`` for every patient concurrently; see :meth:`EpicFHIRClient.pull`.

    Arguments are checked here, before anything runs (bad templates, Epic-refused categories, a
    non-positive concurrency or buffer raise :class:`ConfigurationError`). Repeated patient ids are pulled
    once. ``on_error="collect"`` collects the failures of single streams but not those of the credentials or
    setup, which end the pull with a :class:`PullError` whose ``patient_id`` is ``None`` (see
    :class:`PullStream`).
    """
    queries = expand_queries(types, expand)
    if isinstance(concurrency, anyio.CapacityLimiter):
        limiter = concurrency
    elif isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        limiter = anyio.CapacityLimiter(concurrency)
    else:
        raise ConfigurationError("concurrency must be a positive int or an anyio.CapacityLimiter")
    if not isinstance(buffer, int) or buffer < 1:
        raise ConfigurationError("buffer must be a positive number of pages")
    if on_error not in ("raise", "collect"):
        raise ConfigurationError("on_error must be 'raise' or 'collect'")
    if isinstance(patients, str):
        raise ConfigurationError("patients must be an iterable of ids, not one string: use [patient_id]")
    return PullStream(
        client,
        patients,
        queries,
        limiter=limiter,
        on_error=on_error,
        checkpoint=checkpoint,
        progress=progress,
        buffer=buffer,
        keep_outcomes=keep_outcomes,
        retries=retries,
    )


# -- the bare `async for` mode ---------------------------------------------------------------------------
#
# The bare ``async for item in client.pull(...)`` mode: the pull advanced in rounds, inside ``__anext__``.
#
# Iterated without ``async with``, a pull has no context that could own a task group across the consumer's
# loop body (anyio forbids yielding while one is open, and a ``break`` would leave it half closed). So nothing
# runs between items: when the consumer's buffer is empty, ``__anext__`` runs one *round*, a task group opened
# and closed within that call that advances up to ``concurrency`` active (patient, query) streams by one page
# each, at once, then hands those pages out. Breaking out leaves no task running and sends no further request;
# cancelling the caller cancels the round. Memory is at most ``concurrency`` pages. The price: fetching does not
# overlap with the consumer's own work, and a round lasts as long as its slowest page.
#
# The streams are advanced with the same :meth:`PullStream._step` as the ``async with`` mode (the search's
# page iterator is a plain object, ``_search._Pager``, so a new task can take it on each round), and finished
# through the same consumer code, so errors, outcomes, checkpoints and progress are identical.


class Rounds:
    """The bare iteration's state between ``__anext__`` calls: active streams, waiting streams, fetched pages."""

    __slots__ = ("_active", "_exhausted", "_ids", "_pending", "_pull", "_waiting", "_width")

    def __init__(self, pull: PullStream) -> None:
        self._pull = pull
        self._ids = UniqueIds(pull._patients)
        self._exhausted = False  # every patient id read
        total = pull._limiter.total_tokens
        # A round holds at most this many pages; a limiter without a finite size gets the buffer's size.
        self._width = max(1, int(total)) if math.isfinite(total) else pull._buffer
        self._active: list[StreamState] = []
        self._waiting: deque[StreamState] = deque()  # streams of an admitted patient that found no place yet
        self._pending: deque[Chunk] = deque()

    async def next_chunk(self) -> Chunk | None:
        """The next page (or stream end) to hand out; ``None`` once there is none (or the pull has failed)."""
        pending = self._pending
        while not pending:
            if self._pull._fatal is not None:
                return None
            await self._refill()
            if not self._active:
                return None
            await self._round()
        return pending.popleft()

    async def _refill(self) -> None:
        # Patient ids are read only when a place is free, so the patient iterable is never materialised.
        pull = self._pull
        while len(self._active) < self._width:
            if self._waiting:
                self._active.append(self._waiting.popleft())
                continue
            if self._exhausted:
                return
            try:
                patient_id = await self._ids.__anext__()
            except StopAsyncIteration:
                self._ids_done()
                return
            except Exception as exc:  # the patients iterable failed, or gave a bad id
                self._ids_done()
                pull._set_fatal(exc)
                await self.aclose()
                return
            self._waiting.extend(StreamState(patient_id, q) for q in pull._admit(patient_id))

    def _ids_done(self) -> None:
        self._exhausted = True
        self._pull._c.streams_total = self._pull._c.patients_seen * len(self._pull.queries)

    async def _round(self) -> None:
        pull = self._pull
        active = self._active
        results: list[Chunk | None] = [None] * len(active)

        async def advance(index: int) -> None:
            try:
                async with pull._limiter:  # a shared limiter bounds this pull's requests with the others'
                    results[index] = await pull._step(active[index])
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # as in the other mode: the stream ends without a word

        try:
            async with anyio.create_task_group() as tg:
                pull._streams_scope = tg.cancel_scope  # a fatal error cancels the rest of the round
                for index in range(len(active)):
                    tg.start_soon(advance, index)
        except BaseException:
            # Cancelled (or interrupted) mid-round: the streams cut short cannot resume where they were, so the
            # pull ends here; a later __anext__ says so instead of handing out a silently shortened pull.
            pull._set_fatal(
                PullError(
                    "the pull was interrupted in the middle of fetching (its caller was cancelled); start it "
                    "again (a checkpoint resumes it)",
                    patient_id=None,
                    query="",
                )
            )
            await self.aclose()
            raise
        finally:
            pull._streams_scope = None
        still: list[StreamState] = []
        for stream, chunk in zip(active, results, strict=True):
            if chunk is None:  # its error ended the pull, or a fatal error cancelled it mid-page
                await close_pages(stream)
                continue
            if chunk.last:
                self._pending.append(chunk)
                continue
            if chunk.resources:
                self._pending.append(chunk)
            still.append(stream)
        self._active = still
        if pull._fatal is not None:
            await self.aclose(keep_pending=True)  # what was fetched is still handed out before the error

    async def aclose(self, *, keep_pending: bool = False) -> None:
        """Close every open page iterator and the patient ids; nothing runs afterwards."""
        streams = [*self._active, *self._waiting]
        self._active = []
        self._waiting.clear()
        if not keep_pending:
            self._pending.clear()
        self._exhausted = True
        for stream in streams:
            await close_pages(stream)
        await self._ids.aclose()
