"""Reading one Bulk Data output file: Epic's token rule, NDJSON line splitting, resuming a dropped body.

A :class:`FileSource` is what a finished export's files need (the session, the status URL the file URLs are
relative to, the manifest, whether other origins are allowed). :func:`open_file` applies the token rule (the
bearer only with ``requiresAccessToken`` and only to the FHIR server's origin: docs/epic-notes.md §4.4) and
turns an expired file into a clear :class:`BulkExportError`. :func:`file_batches` splits the body into lines,
hands them out in lists of at least ``min_bytes`` of body, and re-requests the file after a dropped connection
(:data:`._retry.BULK_FILE_RETRY`), skipping what was already handed out. :mod:`._resources` (many files, one
consumer) and :mod:`._download` (files to disk) build on these.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
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
    TransportError,
    UnsafeURLError,
)
from .._http import HTTPSession
from .._urls import join_url, redact_url
from ._manifest import BulkFileRef, BulkManifest
from ._ndjson import NDJSONError, NDJSONSplitter

__all__ = ["NDJSON_ACCEPT", "FileSource", "file_batches", "file_failed", "open_file", "unwrap_group"]

NDJSON_ACCEPT = "application/fhir+ndjson"


@dataclass(frozen=True)
class FileSource:
    """What reading a finished export's files takes: the client's session, the status URL (file URLs resolve
    against it), the manifest, and whether files on another origin may be fetched (without the token)."""

    session: HTTPSession
    status_url: str
    manifest: BulkManifest
    allow_foreign: bool

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


def file_failed(ref: BulkFileRef, exc: Exception) -> BulkExportError:
    """The error for a file whose download failed: after the retries of cut connections (their message names
    no URL), or at once for an undecodable body or a malformed redirect (only the type is shown)."""
    if isinstance(exc, (httpx.TransportError, TransportError)):
        return BulkExportError(f"downloading bulk file {redact_url(ref.url)} kept failing: {exc}")
    return BulkExportError(f"downloading bulk file {redact_url(ref.url)} failed: {type(exc).__name__}")


@asynccontextmanager
async def open_file(source: FileSource, url: str) -> AsyncIterator[httpx.Response]:
    """The streaming response of one manifest file, with Epic's token rule applied.

    The bearer token goes only with ``requiresAccessToken`` *and* a file on the FHIR server's origin (Epic's
    files need it); a file elsewhere is refused with :class:`UnsafeURLError` unless the job allows foreign
    files, which are then fetched without the token. A 404/410 (files expire, ~14 days at Epic) is a
    :class:`BulkExportError` saying so. Error bodies are read under the client's size limit.
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
                aclosing(cast("AsyncGenerator[bytes, None]", response.aiter_bytes())) as body,
            ):
                async for chunk in body:
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    size += len(chunk)
                    batch = splitter.feed(chunk)
                    if batch:
                        start, seen = seen, seen + len(batch)
                        if seen > delivered:
                            fresh = batch[delivered - start :] if start < delivered else batch
                            if group:
                                group += fresh
                            else:
                                group = fresh
                    if not group:
                        size = 0  # nothing new yet (lines skipped on a resumed read, or a long line)
                    elif size >= min_bytes:
                        yield group
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
                raise file_failed(ref, exc) from exc
            await anyio.sleep(delay)
        except NDJSONError as exc:
            raise BulkExportError(f"bulk file {redact_url(ref.url)} ({ref.type}): {exc}") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # an undecodable body, a malformed redirect
            raise file_failed(ref, exc) from exc
    if verify and ref.count is not None and delivered != ref.count:
        raise BulkExportError(
            f"bulk file {redact_url(ref.url)} ({ref.type}) held {delivered} resources; the manifest says {ref.count}"
        )
