"""Streaming a finished export's NDJSON files: token policy per file, line splitting, concurrent readers.

Shape (why an async context manager): reading several files at once needs a task group, and an async
generator must not yield while a task group is open inside it (anyio's documented caveat: a ``break`` in the
caller leaves the group open in a half-closed generator, finalised later in another task). So::

    async with job.resources(types=["Observation"]) as stream:   # up to `concurrency` files at once
        async for resource in stream:
            ...

owns its task group between enter and exit; leaving the block early cancels the downloads. A bare
``async for resource in job.resources()`` is also allowed and reads the files one after another in the
caller's own task (no task group, so nothing to leak).

Files travel as lists of raw lines (one list per HTTP chunk) through a bounded memory object stream: a slow
consumer blocks the readers, so at most ``buffer + concurrency`` chunks are held whatever the file size.
Each line is parsed with ``orjson`` only when the consumer asks for it, so a single parsed resource is alive
at a time, as in a hand-written loop: holding hundreds of freshly parsed dicts (a list per chunk, several
chunks queued) measured up to twice the parse cost (cache misses), and lists rather than single resources
keep the hand-off cost per chunk, not per resource (perf-anchors.md, scenario C).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _json
from ._bulk_manifest import BulkFileRef
from ._config import MAX_NDJSON_LINE_BYTES
from ._errors import (
    BulkExportError,
    FHIRStatusError,
    NotFound,
    TransportError,
    UnsafeURLError,
    error_from_response,
    redact_url,
)
from ._ndjson import NDJSONError, NDJSONSplitter
from .auth._base import same_origin

if TYPE_CHECKING:
    from ._bulk import BulkExportJob

__all__ = ["NDJSON_ACCEPT", "BulkResourceStream", "line_limit", "open_file", "unwrap_group"]

NDJSON_ACCEPT = "application/fhir+ndjson"
#: A file whose connection drops mid-body is re-requested this many times (lines already read are skipped).
_BODY_RETRIES = 3


@asynccontextmanager
async def open_file(job: BulkExportJob, url: str) -> AsyncIterator[httpx.Response]:
    """The streaming response of one manifest file, with Epic's token rule applied.

    The bearer token goes only with ``requiresAccessToken`` *and* a file on the FHIR server's origin
    (§4: Epic's files need it); a file elsewhere is refused with :class:`UnsafeURLError` unless the job allows
    foreign files, which are then fetched without the token. A 404/410 (files expire, ~14 days at Epic) is a
    :class:`BulkExportError` saying so.
    """
    manifest = job.require_manifest()
    target = httpx.URL(job.status_url).join(url)
    on_origin = same_origin(target, job.client.base_url)
    if not on_origin and not job.allow_foreign_files:
        raise UnsafeURLError(
            f"bulk file {redact_url(target)} is not on the FHIR server's origin; pass "
            "allow_foreign_files=True to fetch it without the bearer token"
        )
    headers = {"Accept": NDJSON_ACCEPT}
    opened = False
    try:
        if on_origin and manifest.requires_access_token:
            async with job.client.stream("GET", str(target), headers=headers) as response:
                opened = True
                yield response
        else:
            # auth=None: no bearer token on this request, whatever the client would add.
            async with job.client.http.stream("GET", target, headers=headers, auth=None) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from_response(response)
                opened = True
                yield response
    except NotFound as exc:
        if opened:
            raise
        raise BulkExportError(
            f"bulk file {redact_url(target)} is gone ({exc.status_code}): export files expire (about 14 days "
            "at Epic) or were deleted; start a new export",
            operation_outcome=exc.operation_outcome,
            status_code=exc.status_code,
        ) from exc
    except FHIRStatusError as exc:
        if opened:
            raise
        raise BulkExportError(
            f"downloading bulk file {redact_url(target)} failed: {exc}",
            operation_outcome=exc.operation_outcome,
            status_code=exc.status_code,
        ) from exc


async def file_batches(
    job: BulkExportJob,
    ref: BulkFileRef,
    *,
    verify: bool,
    on_bytes: Callable[[int], object] | None = None,
    parse: bool = True,
) -> AsyncGenerator[list[Any], None]:
    """Resources of one file, one list per chunk (parsed, or raw non-blank lines with ``parse=False``).

    Re-requests the file after a dropped connection, skipping the lines already yielded, so the caller sees
    each line exactly once.
    """
    delivered = 0
    attempt = 0
    max_line = line_limit(job)
    while True:
        splitter = NDJSONSplitter(parse=parse, max_line=max_line)
        seen = 0
        try:
            async with (
                open_file(job, ref.url) as response,
                aclosing(cast("AsyncGenerator[bytes, None]", response.aiter_bytes())) as body,
            ):
                async for chunk in body:
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    batch = splitter.feed(chunk)
                    if batch:
                        start, seen = seen, seen + len(batch)
                        if seen > delivered:
                            yield batch[delivered - start :] if start < delivered else batch
                            delivered = seen
                batch = splitter.finish()
                if batch:
                    start, seen = seen, seen + len(batch)
                    if seen > delivered:
                        yield batch[delivered - start :] if start < delivered else batch
                        delivered = seen
            break
        except (httpx.TransportError, TransportError) as exc:
            attempt += 1
            if attempt > _BODY_RETRIES:
                raise BulkExportError(
                    f"downloading bulk file {redact_url(ref.url)} kept failing: {exc}"
                ) from exc
        except NDJSONError as exc:
            raise BulkExportError(f"bulk file {redact_url(ref.url)} ({ref.type}): {exc}") from None
    if verify and ref.count is not None and delivered != ref.count:
        raise BulkExportError(
            f"bulk file {redact_url(ref.url)} ({ref.type}) held {delivered} resources; the manifest says {ref.count}"
        )


def line_limit(job: BulkExportJob) -> int:
    """The client's ``max_ndjson_line_bytes`` (structural clients in tests may lack it)."""
    limit = getattr(job.client, "max_ndjson_line_bytes", MAX_NDJSON_LINE_BYTES)
    return limit if isinstance(limit, int) else MAX_NDJSON_LINE_BYTES


def unwrap_group(exc: BaseException) -> BaseException:
    """The single real error inside a task group's exception group (cancellations dropped), else ``exc``.

    Duck-typed on ``.exceptions`` so it needs no ``exceptiongroup`` backport on Python 3.10.
    """
    inner = getattr(exc, "exceptions", None)
    if not isinstance(inner, tuple):
        return exc
    errors = [e for e in inner if not isinstance(e, anyio.get_cancelled_exc_class())]
    if len(errors) == 1 and isinstance(errors[0], BaseException):
        return unwrap_group(errors[0])
    return exc


_loads = _json.loads


def _parse(line: bytes) -> Any:
    try:
        return _json.loads(line)
    except _json.JSONDecodeError:
        raise BulkExportError("a line of a bulk file is not valid JSON") from None


class BulkResourceStream:
    """The resources of a finished export's output files (see the module docstring for the two forms).

    ``counts`` (type → resources delivered), ``files_done`` and ``bytes`` grow as files are read.
    """

    def __init__(
        self,
        job: BulkExportJob,
        types: Sequence[str] | None,
        *,
        concurrency: int = 4,
        buffer: int = 4,
        verify: bool = True,
    ) -> None:
        if concurrency < 1 or buffer < 0:
            raise ValueError("concurrency must be >= 1 and buffer >= 0")
        self.files: tuple[BulkFileRef, ...] = job.require_manifest().outputs_of(types)
        self._job = job
        self._concurrency = concurrency
        self._buffer = buffer
        self._verify = verify
        self.counts: dict[str, int] = {}
        self.files_done = 0
        self.bytes = 0
        self._state: Literal["new", "running", "closed"] = "new"
        self._tg: anyio.abc.TaskGroup | None = None
        self._receive: MemoryObjectReceiveStream[list[Any]] | None = None
        self._batch: list[Any] = []
        self._index = 0
        self._sequential: _SequentialIterator | None = None

    def _add_bytes(self, n: int) -> None:
        self.bytes += n

    async def _batches_of(self, ref: BulkFileRef) -> AsyncGenerator[list[Any], None]:
        batches = file_batches(self._job, ref, verify=self._verify, on_bytes=self._add_bytes, parse=False)
        async with aclosing(batches) as it:
            async for batch in it:
                self.counts[ref.type] = self.counts.get(ref.type, 0) + len(batch)
                yield batch
        self.files_done += 1

    # -- concurrent form ---------------------------------------------------------------------------------
    async def __aenter__(self) -> BulkResourceStream:
        if self._state != "new":
            raise RuntimeError("a BulkResourceStream can be entered only once")
        send, self._receive = anyio.create_memory_object_stream[list[Any]](self._buffer)
        limiter = anyio.CapacityLimiter(self._concurrency)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = "running"
        with send:
            for ref in self.files:
                tg.start_soon(self._produce, ref, send.clone(), limiter)
        return self

    async def _produce(
        self, ref: BulkFileRef, send: MemoryObjectSendStream[list[Any]], limiter: anyio.CapacityLimiter
    ) -> None:
        with send:
            async with limiter:
                try:
                    async with aclosing(self._batches_of(ref)) as it:
                        async for batch in it:
                            # No checkpoint when there is room: anyio's send() always yields to the event
                            # loop first, which costs more than parsing the chunk (perf-anchors.md, C).
                            try:
                                send.send_nowait(batch)
                            except anyio.WouldBlock:
                                await send.send(batch)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the consumer left the block: nothing more to deliver

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._state = "closed"
        tg, self._tg = self._tg, None
        if self._receive is not None:
            self._receive.close()
        if tg is None:
            return None
        tg.cancel_scope.cancel()  # no-op when every file was read; stops readers after an early exit
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        except BaseException as raised:
            inner = unwrap_group(raised)
            if inner is raised:
                raise
            raise inner from None

    # -- iteration ---------------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Any]:
        if self._state == "new":
            self._state = "closed"
            self._sequential = _SequentialIterator(self._all_batches())
            return self._sequential
        return self

    async def aclose(self) -> None:
        """Stop a bare ``async for`` early and close its HTTP stream: ``async with aclosing(job.resources())``."""
        if self._sequential is not None:
            await self._sequential.aclose()

    async def __anext__(self) -> Any:
        batch = self._batch
        while self._index >= len(batch):
            receive = self._receive
            if receive is None or self._state != "running":
                raise StopAsyncIteration
            try:
                # receive_nowait first: receive() yields to the event loop even when a batch is waiting.
                batch = receive.receive_nowait()
            except anyio.WouldBlock:
                try:
                    batch = await receive.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    raise StopAsyncIteration from None
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise StopAsyncIteration from None
            self._batch, self._index = batch, 0
        line = batch[self._index]
        self._index += 1
        try:
            return _loads(line)  # inlined (no helper call): this runs once per resource
        except _json.JSONDecodeError:
            raise BulkExportError("a line of a bulk file is not valid JSON") from None

    async def batches(self) -> AsyncIterator[list[Any]]:
        """The resources as lists (one per HTTP chunk): the cheapest way to consume a large export."""
        if self._state != "running" or self._receive is None:
            raise RuntimeError("use `async with job.resources() as stream:` before stream.batches()")
        if self._index < len(self._batch):
            yield [_parse(line) for line in self._batch[self._index :]]
            self._batch, self._index = [], 0
        async for batch in self._receive:
            yield [_parse(line) for line in batch]

    async def _all_batches(self) -> AsyncGenerator[list[Any], None]:
        for ref in self.files:
            async with aclosing(self._batches_of(ref)) as it:
                async for batch in it:
                    yield batch


class _SequentialIterator:
    """``async for`` over resources, one file after another in the caller's task.

    A plain ``__anext__`` that steps through the current list, instead of an async generator yielding per
    resource: that saves about a microsecond per resource, a sixth of the parse cost.
    """

    __slots__ = ("_batch", "_batches", "_index")

    def __init__(self, batches: AsyncGenerator[list[Any], None]) -> None:
        self._batches = batches
        self._batch: list[Any] = []
        self._index = 0

    def __aiter__(self) -> _SequentialIterator:
        return self

    async def __anext__(self) -> Any:
        batch = self._batch
        while self._index >= len(batch):
            batch = self._batch = await self._batches.__anext__()  # StopAsyncIteration ends the loop
            self._index = 0
        line = batch[self._index]
        self._index += 1
        try:
            return _loads(line)  # inlined (no helper call): this runs once per resource
        except _json.JSONDecodeError:
            await self._batches.aclose()
            raise BulkExportError("a line of a bulk file is not valid JSON") from None

    async def aclose(self) -> None:
        """Close the underlying file stream (use with ``contextlib.aclosing`` when breaking out early)."""
        await self._batches.aclose()
