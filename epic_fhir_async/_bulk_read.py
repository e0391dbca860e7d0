"""Reading one Bulk Data output file: Epic's token rule, NDJSON line splitting, resuming a dropped body.

:func:`open_file` applies the token policy of epic-behaviour.md §4 (the bearer only with
``requiresAccessToken`` and only to the FHIR server's origin) and turns an expired file into a clear
:class:`BulkExportError`. :func:`file_batches` splits the body into lines, hands them out in lists of at
least ``min_bytes`` of body, and re-requests the file after a dropped connection, skipping what was already
handed out. :mod:`._bulk_stream` (many files, one consumer) and :mod:`._bulk_download` (files to disk) build
on these.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import httpx

from ._bulk_manifest import BulkFileRef
from ._config import MAX_NDJSON_LINE_BYTES
from ._errors import (
    BulkExportError,
    FHIRStatusError,
    NotFound,
    TransportError,
    UnsafeURLError,
    error_from_response,
    join_url,
    redact_url,
)
from ._ndjson import NDJSONError, NDJSONSplitter
from .auth._base import same_origin

if TYPE_CHECKING:
    from ._bulk import BulkExportJob

__all__ = ["FILE_RETRIES", "NDJSON_ACCEPT", "file_batches", "file_failed", "line_limit", "open_file"]

NDJSON_ACCEPT = "application/fhir+ndjson"
#: A file whose connection drops mid-body is re-requested this many times (lines already read are skipped;
#: a download to disk starts the file again).
FILE_RETRIES = 3


def file_failed(ref: BulkFileRef, exc: Exception) -> BulkExportError:
    """The error for a file whose download failed: after :data:`FILE_RETRIES` cut connections (their message
    names no URL), or at once for an undecodable body or a malformed redirect (only the type is shown)."""
    if isinstance(exc, (httpx.TransportError, TransportError)):
        return BulkExportError(f"downloading bulk file {redact_url(ref.url)} kept failing: {exc}")
    return BulkExportError(f"downloading bulk file {redact_url(ref.url)} failed: {type(exc).__name__}")


@asynccontextmanager
async def open_file(job: BulkExportJob, url: str) -> AsyncIterator[httpx.Response]:
    """The streaming response of one manifest file, with Epic's token rule applied.

    The bearer token goes only with ``requiresAccessToken`` *and* a file on the FHIR server's origin
    (§4: Epic's files need it); a file elsewhere is refused with :class:`UnsafeURLError` unless the job allows
    foreign files, which are then fetched without the token. A 404/410 (files expire, ~14 days at Epic) is a
    :class:`BulkExportError` saying so.
    """
    manifest = job.require_manifest()
    target = join_url(job.status_url, url)
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
    min_bytes: int = 0,
) -> AsyncGenerator[list[Any], None]:
    """Resources of one file as lists (parsed, or raw non-blank lines with ``parse=False``).

    A list holds the lines of at least ``min_bytes`` of body (0: one list per HTTP chunk), except the last.
    Re-requests the file after a dropped connection, skipping the lines already yielded, so the caller sees
    each line exactly once.
    """
    delivered = 0
    attempt = 0
    max_line = line_limit(job)
    while True:
        splitter = NDJSONSplitter(parse=parse, max_line=max_line)
        seen = 0  # lines split in this attempt; `group` holds those after `delivered`, not yet yielded
        group: list[Any] = []
        size = 0
        try:
            async with (
                open_file(job, ref.url) as response,
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
            attempt += 1
            if attempt > FILE_RETRIES:
                raise file_failed(ref, exc) from exc
        except NDJSONError as exc:
            raise BulkExportError(f"bulk file {redact_url(ref.url)} ({ref.type}): {exc}") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # an undecodable body, a malformed redirect
            raise file_failed(ref, exc) from exc
    if verify and ref.count is not None and delivered != ref.count:
        raise BulkExportError(
            f"bulk file {redact_url(ref.url)} ({ref.type}) held {delivered} resources; the manifest says {ref.count}"
        )


def line_limit(job: BulkExportJob) -> int:
    """The client's ``max_ndjson_line_bytes`` (structural clients in tests may lack it)."""
    limit = getattr(job.client, "max_ndjson_line_bytes", MAX_NDJSON_LINE_BYTES)
    return limit if isinstance(limit, int) else MAX_NDJSON_LINE_BYTES
