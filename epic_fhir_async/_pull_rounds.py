"""The bare ``async for item in client.pull(...)`` mode: the pull advanced in rounds, inside ``__anext__``.

Iterated without ``async with``, a pull has no context that could own a task group across the consumer's
loop body (anyio forbids yielding while one is open, and a ``break`` would leave it half closed). So nothing
runs between items: when the consumer's buffer is empty, ``__anext__`` runs one *round*, a task group opened
and closed within that call that advances up to ``concurrency`` active (patient, query) streams by one page
each, at once, then hands those pages out. Breaking out leaves no task running and sends no further request;
cancelling the caller cancels the round. Memory is at most ``concurrency`` pages. The price: fetching does not
overlap with the consumer's own work, and a round lasts as long as its slowest page.

The streams are advanced with the same :meth:`PullStream._step` as the ``async with`` mode (the search's
page iterator is a plain object, ``_search._Pager``, so a new task can take it on each round), and finished
through the same consumer code, so errors, outcomes, checkpoints and progress are identical.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import anyio

from ._errors import PullError
from ._pull_plan import UniqueIds
from ._pull_types import Chunk, StreamState, close_pages

if TYPE_CHECKING:
    from ._pull import PullStream

__all__ = ["Rounds"]


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
