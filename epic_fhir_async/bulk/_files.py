"""Reading one Bulk Data output file: Epic's token rule, NDJSON line splitting, resuming a dropped body.

A :class:`FileSource` is what a finished export's files need (the session, the status URL the file URLs are
relative to, the manifest, whether other origins are allowed). :func:`open_file` applies the token rule (the
bearer only with ``requiresAccessToken`` and only to the FHIR server's origin: docs/epic-notes.md §4.4) and
turns an expired file into a clear :class:`BulkExportError`. :func:`file_batches` splits the body into lines,
hands them out in lists of at least ``min_bytes`` of body, and re-requests the file after a dropped connection
(:data:`._retry.BULK_FILE_RETRY`), skipping what was already handed out. :mod:`._resources` (many files, one
consumer) and :mod:`._download` (files to disk) build on these.

A compressed file may inflate at most :data:`MAX_INFLATION` times its size on the wire (:func:`body_chunks`):
real NDJSON compresses about 15x, a gzip bomb 1000x, and a download to disk would otherwise write whatever
the bomb holds before any count could be checked.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import anyio
import httpx

from .. import _retry
from .._errors import (
    BulkExportError,
    FHIRStatusError,
    NotFound,
    ResponseTooLarge,
    TransportError,
    UnsafeURLError,
)
from .._http import HTTPSession, abandon, checked_stream
from .._urls import join_url, redact_url
from ._manifest import BulkFileRef, BulkManifest
from ._ndjson import NDJSONError, NDJSONSplitter

__all__ = [
    "MAX_INFLATION",
    "NDJSON_ACCEPT",
    "FileSource",
    "body_chunks",
    "file_batches",
    "file_failed",
    "more_than_counted",
    "open_file",
    "unwrap_group",
]

NDJSON_ACCEPT = "application/fhir+ndjson"
#: Decoded bytes a compressed bulk file may hold per byte on the wire (sandbox NDJSON gzips ~15x; DEFLATE's
#: own ceiling is ~1000x, reached only by a body built for it). The first :data:`_FREE_INFLATION` bytes are
#: not checked: a tiny file's header can make any ratio.
MAX_INFLATION = 200
_FREE_INFLATION = 1024 * 1024
_INFLATION = "epic_fhir_async.inflation"


@dataclass(frozen=True)
class FileSource:
    """What reading a finished export's files takes: the client's session, the status URL (file URLs resolve
    against it), the manifest, and whether files on another origin may be fetched (without the token)."""

    session: HTTPSession
    status_url: str
    manifest: BulkManifest
    allow_foreign: bool
    #: The files to read (``None``: the manifest's output files; the job passes its ``deleted`` files).
    files: Sequence[BulkFileRef] | None = None

    def refs(self, types: Sequence[str] | None = None) -> tuple[BulkFileRef, ...]:
        """The files to read, of ``types`` when given."""
        if self.files is None:
            return self.manifest.outputs_of(types)
        wanted = set(types or ())
        return tuple(f for f in self.files if not wanted or f.type in wanted)

    @property
    def max_line(self) -> int:
        """The client's ``max_ndjson_line_bytes``: the longest NDJSON line held in memory."""
        return self.session.max_ndjson_line_bytes


def unwrap_group(exc: BaseException) -> BaseException:
    """The first real error inside a task group's ``ExceptionGroup`` (cancellations of its siblings dropped),
    or ``exc`` itself when it holds none. Several files can fail at once; the caller's ``except
    EpicFHIRError`` must still see one SDK error, not a group."""
    inner = getattr(exc, "exceptions", None)
    if not inner:
        return exc
    errors = [unwrap_group(e) for e in inner if not isinstance(e, anyio.get_cancelled_exc_class())]
    return errors[0] if errors else exc


class _Inflation:
    """Counts a compressed file's decoded bytes (told by the reader) against its raw bytes (counted under
    httpx's decoder by :func:`~epic_fhir_async._http.checked_stream`, which also raises the refusal there, so
    that every body generator ends normally)."""

    def __init__(self, response: httpx.Response, url: str) -> None:
        self.decoded = 0
        self._url = url
        self._raw = checked_stream(response, self._check)

    def _check(self) -> None:
        raw = self._raw.raw if self._raw is not None else 0
        if self.decoded > max(_FREE_INFLATION, raw * MAX_INFLATION):
            raise BulkExportError(
                f"bulk file {redact_url(self._url)} inflates more than {MAX_INFLATION} times its compressed "
                f"size ({raw} bytes gave over {self.decoded}): a compression bomb, not NDJSON; nothing more of "
                "it is read"
            )


def body_chunks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The decoded body of a file response (from :func:`open_file`), chunk by chunk; close it with
    ``aclosing``.

    An uncompressed body is read raw: httpx's decoder and re-chunker would pass every chunk through two more
    generators and change nothing. A compressed body goes through the decoder, and its decoded bytes are
    counted for the inflation guard."""
    guard = response.extensions.get(_INFLATION)
    if guard is not None:
        return _counted(cast("AsyncGenerator[bytes, None]", response.aiter_bytes()), guard)
    if response.is_stream_consumed:  # read in full already (httpx.MockTransport reads every response)
        return cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
    return cast("AsyncGenerator[bytes, None]", response.aiter_raw())


async def _counted(chunks: AsyncGenerator[bytes, None], guard: _Inflation) -> AsyncGenerator[bytes, None]:
    async with aclosing(chunks):
        async for chunk in chunks:
            guard.decoded += len(chunk)
            yield chunk


def file_failed(source: FileSource, ref: BulkFileRef, exc: Exception) -> BulkExportError:
    """The error for a file whose download failed: after the retries of cut connections (their message names
    no URL), or at once for an undecodable body or a malformed redirect (only the type is shown). ``exc``,
    which the caller chains, is scrubbed of the request's secrets first."""
    source.session.scrub_exception(exc)
    if isinstance(exc, (httpx.TransportError, TransportError)):
        return BulkExportError(f"downloading bulk file {redact_url(ref.url)} kept failing: {exc}")
    return BulkExportError(f"downloading bulk file {redact_url(ref.url)} failed: {type(exc).__name__}")


@asynccontextmanager
async def open_file(source: FileSource, url: str) -> AsyncIterator[httpx.Response]:
    """The streaming response of one manifest file, with Epic's token rule applied.

    The bearer token goes only with ``requiresAccessToken`` *and* a file on the FHIR server's origin (Epic's
    files need it); a file elsewhere is refused with :class:`UnsafeURLError` unless the job allows foreign
    files, which are then fetched without the token. A 404/410 (files expire, ~14 days at Epic) is a
    :class:`BulkExportError` saying so. Error bodies are read under the error-body limit. A compressed body
    is guarded against inflating more than :data:`MAX_INFLATION` times (readers report decoded bytes with
    :func:`body_chunks`).
    """
    session = source.session
    target = join_url(source.status_url, url)
    on_origin = session.on_origin(target)
    if not on_origin and not source.allow_foreign:
        raise UnsafeURLError(
            f"bulk file {redact_url(target)} is not on the FHIR server's origin; pass "
            "allow_foreign_files=True to fetch it without the bearer token"
        )
    headers = {"Accept": NDJSON_ACCEPT}
    opened = False
    try:
        async with session.stream(
            "GET",
            target,
            headers=headers,
            allow_foreign_origin=source.allow_foreign,
            authenticate=on_origin and source.manifest.requires_access_token,
        ) as response:
            opened = True
            if response.headers.get("content-encoding"):
                response.extensions[_INFLATION] = _Inflation(response, str(target))
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
    source: FileSource,
    ref: BulkFileRef,
    *,
    verify: bool,
    on_bytes: Callable[[int], object] | None = None,
    parse: bool = True,
    min_bytes: int = 0,
) -> AsyncGenerator[list[Any], None]:
    """Resources of one file as lists (parsed, or raw non-blank lines with ``parse=False``).

    A list holds the lines of at least ``min_bytes`` of body (0: one list per HTTP chunk), except the last.
    Re-requests the file after a dropped connection, skipping the lines already yielded, so the caller sees
    each line exactly once.
    """
    delivered = 0
    retrying = _retry.Retrying(_retry.BULK_FILE_RETRY)
    max_line = source.max_line
    while True:
        retrying.attempt += 1
        splitter = NDJSONSplitter(parse=parse, max_line=max_line)
        seen = 0  # lines split in this attempt; `group` holds those after `delivered`, not yet yielded
        group: list[Any] = []
        size = 0
        try:
            async with (
                open_file(source, ref.url) as response,
                aclosing(body_chunks(response)) as body,
            ):
                async for chunk in body:
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    size += len(chunk)
                    try:
                        batch = splitter.feed(chunk)
                    except (ResponseTooLarge, NDJSONError):
                        await abandon(response, body)  # the rest is not read: leave nothing suspended
                        raise
                    if batch:
                        start, seen = seen, seen + len(batch)
                        if verify and ref.count is not None and seen > ref.count:
                            await abandon(response, body)
                            raise more_than_counted(ref, seen)
                        if seen > delivered:
                            fresh = batch[delivered - start :] if start < delivered else batch
                            if group:
                                group += fresh
                            else:
                                group = fresh
                    if not group:
                        size = 0  # nothing new yet (lines skipped on a resumed read, or a long line)
                    elif size >= min_bytes:
                        try:
                            yield group
                        except (
                            GeneratorExit
                        ):  # the consumer stopped: end the read without leaving it suspended
                            await abandon(response, body)
                            raise
                        delivered, group, size = seen, [], 0
                batch = splitter.finish()
                if batch:
                    start, seen = seen, seen + len(batch)
                    if seen > delivered:
                        group += batch[delivered - start :] if start < delivered else batch
                if group:
                    yield group
                    delivered, group = seen, []
            break
        except (httpx.TransportError, TransportError) as exc:
            delay = retrying.next_delay()
            if delay is None:
                raise file_failed(source, ref, exc) from exc
            await anyio.sleep(delay)
        except NDJSONError as exc:
            raise BulkExportError(f"bulk file {redact_url(ref.url)} ({ref.type}): {exc}") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # an undecodable body, a malformed redirect
            raise file_failed(source, ref, exc) from exc
    if verify and ref.count is not None and delivered != ref.count:
        raise BulkExportError(
            f"bulk file {redact_url(ref.url)} ({ref.type}) held {delivered} resources; the manifest says {ref.count}"
        )


def more_than_counted(ref: BulkFileRef, lines: int) -> BulkExportError:
    """Raised as soon as a file passes its manifest count, not at its end: a server could send an endless one."""
    return BulkExportError(
        f"bulk file {redact_url(ref.url)} ({ref.type}) holds more than the {ref.count} resources the manifest "
        f"says (at least {lines}); stopped reading it"
    )
