"""Streaming a finished export's NDJSON files to one consumer: concurrent readers, lazy parsing.

Reading one file (Epic's token rule, line splitting, resuming a dropped body) is :mod:`._files`.

Shape (why an async context manager): reading several files at once needs a task group, and an async
generator must not yield while a task group is open inside it (anyio's documented caveat: a ``break`` in the
caller leaves the group open in a half-closed generator, finalised later in another task). So::

    async with job.resources(types=["Observation"]) as stream:   # up to `concurrency` files at once
        async for resource in stream:
            ...

owns its task group between enter and exit; leaving the block early cancels the downloads. A bare
``async for resource in job.resources()`` is also allowed and reads the files one after another in the
caller's own task (no task group, so nothing to leak).

Files travel as lists of raw lines (about 256 KB of body each) through a bounded memory object stream: a slow
consumer blocks the readers, so at most ``buffer + concurrency`` lists are held whatever the file size.
Each line is parsed with ``orjson`` only when the consumer asks for it, so a single parsed resource is alive
at a time, as in a hand-written loop: holding hundreds of freshly parsed dicts (a list per chunk, several
chunks queued) measured up to twice the parse cost (cache misses). Lists rather than single resources keep
the hand-off cost per list, not per resource, and a list gathers ~256 KB of body rather than one HTTP chunk
(~32 KB on loopback, less behind TLS or gzip): a consumer that outpaces the network waits for every list,
and each wait is two task switches (measured with ``python -m benchmarks bulk``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import _json
from .._errors import BulkExportError, ConfigurationError
from ._files import FileSource, file_batches, unwrap_group
from ._manifest import BulkFileRef

__all__ = ["BulkResourceStream"]

#: Body bytes whose lines a reader collects before handing them to the consumer (see the module docstring).
_HANDOFF_BYTES = 256 * 1024


_NOT_JSON = "a line of a bulk file is not valid JSON"


def _parse_all(lines: list[bytes], pause_gc: bool) -> list[Any]:
    try:
        if pause_gc:
            return _json.loads_each_pausing_gc(lines)
        loads = _json.loads
        return [loads(line) for line in lines]
    except _json.JSONDecodeError:
        raise BulkExportError(_NOT_JSON) from None


class BulkResourceStream:
    """The resources of a finished export's output files (see the module docstring for the two forms).

    ``counts`` (type → resources delivered), ``files_done`` and ``bytes`` grow as files are read.
    """

    __slots__ = (
        "_batch",
        "_buffer",
        "_concurrency",
        "_index",
        "_items",
        "_receive",
        "_source",
        "_state",
        "_tg",
        "_verify",
        "bytes",
        "counts",
        "files",
        "files_done",
    )

    def __init__(
        self,
        source: FileSource,
        types: Sequence[str] | None,
        *,
        concurrency: int = 4,
        buffer: int = 4,
        verify: bool = True,
    ) -> None:
        if concurrency < 1 or buffer < 0:
            raise ConfigurationError("concurrency must be >= 1 and buffer >= 0")
        self.files: tuple[BulkFileRef, ...] = source.refs(types)
        self._source = source
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
        self._items: AsyncGenerator[Any, None] | None = None

    def _add_bytes(self, n: int) -> None:
        self.bytes += n

    async def _batches_of(self, ref: BulkFileRef) -> AsyncGenerator[list[Any], None]:
        batches = file_batches(
            self._source,
            ref,
            verify=self._verify,
            on_bytes=self._add_bytes,
            parse=False,
            min_bytes=_HANDOFF_BYTES,
        )
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
                            # loop first, which costs more than parsing the chunk (measured).
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
        items, self._items = self._items, None
        if items is not None:  # suspended at a yield (or done): closing it awaits nothing
            await items.aclose()
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
    # Both forms hand out resources from async generators: stepping through the same lists and parsing each
    # line, a generator measured ~490 ns per resource and an ``async def __anext__`` method ~580 ns.
    def __aiter__(self) -> AsyncIterator[Any]:
        if self._state == "new":
            self._state = "closed"
            self._items = self._all_resources()
        elif self._items is None:
            self._items = self._received()
        return self._items

    async def __anext__(self) -> Any:
        return await self.__aiter__().__anext__()

    async def aclose(self) -> None:
        """Stop a bare ``async for`` early and close its HTTP stream: ``async with aclosing(job.resources())``."""
        if self._items is not None:
            await self._items.aclose()

    async def _received(self) -> AsyncGenerator[Any, None]:
        receive = self._receive
        loads = _json.loads  # parsed inline in both generators: a call per line measured 30-120 ns more
        while receive is not None and self._state == "running":
            try:
                # receive_nowait first: receive() yields to the event loop even when a batch is waiting.
                batch = receive.receive_nowait()
            except anyio.WouldBlock:
                try:
                    batch = await receive.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    return
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
            self._batch = batch
            for index, line in enumerate(batch, 1):
                self._index = index  # where batches() resumes after an early break
                try:
                    resource = loads(line)
                except _json.JSONDecodeError:
                    raise BulkExportError(_NOT_JSON) from None
                yield resource

    def batches(self, size: int | None = None) -> AsyncIterator[list[Any]]:
        """The resources as lists, for work that wants lists, such as bulk inserts.

        By default a list holds the lines of ~256 KB of body as they arrive (about 170 resources of 1.5 KB),
        each from one file. With ``size``, every list holds ``size`` resources but the last, in the order
        they arrive: with several files read at once, a list can hold several files' (and types') resources.

        A list is parsed at once, with the cyclic GC paused unless the client says ``pause_gc=False``.
        Holding its parsed resources together still costs more CPU per resource than ``async for resource in
        stream``, which parses each one as it is taken and is the cheapest way through an export; smaller
        lists cost less (docs/performance.md).
        """
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigurationError(
                f"stream.batches(size=...) takes a whole number of resources per list, at least 1 (got {size!r})"
            )
        return self._lists(size)

    async def _lists(self, size: int | None) -> AsyncGenerator[list[Any], None]:
        if self._state != "running" or self._receive is None:
            raise RuntimeError("use `async with job.resources() as stream:` before stream.batches()")
        pause_gc = self._source.session.pause_gc
        pending: list[bytes] = []
        if self._items is not None:  # an `async for` over resources came first: go on after its last one
            pending = self._batch[self._index :]
            await self._items.aclose()
            self._items, self._batch, self._index = None, [], 0
        if size is None:
            if pending:
                yield _parse_all(pending, pause_gc)
            async for batch in self._receive:
                yield _parse_all(batch, pause_gc)
            return
        received = aiter(self._receive)
        while True:
            start = 0
            while len(pending) - start >= size:
                yield _parse_all(pending[start : start + size], pause_gc)
                start += size
            del pending[:start]  # pending is this generator's own list: no copy of what is left
            try:
                batch = await anext(received)
            except StopAsyncIteration:
                break
            pending += batch
        if pending:
            yield _parse_all(pending, pause_gc)

    async def _all_resources(self) -> AsyncGenerator[Any, None]:
        loads = _json.loads
        for ref in self.files:
            async with aclosing(self._batches_of(ref)) as it:
                async for batch in it:
                    for line in batch:
                        try:
                            resource = loads(line)
                        except _json.JSONDecodeError:
                            raise BulkExportError(_NOT_JSON) from None
                        yield resource
