"""Bulk Data ``$export`` jobs: status polling, cancel and delete, and the job's files (docs/epic-notes.md §4).

::

    async with client.bulk_export(group_id=GROUP, types=["Patient", "Observation"]) as job:
        save(job.status_url)                     # persist at once: Epic jobs run for hours or days
        manifest = await job.wait(progress=print)
        async with job.resources() as stream:    # several files at once, memory flat
            async for resource in stream:
                ...
        await job.download("out/")               # or files on disk, resumable
        await job.delete()                       # frees Epic's one-export-per-client-and-Group slot

``client.bulk_export(...)`` is awaitable (``job = await client.bulk_export(...)``) and an async context manager:
leaving the ``async with`` block with an exception or a cancellation cancels the job (DELETE, inside a
shielded scope); a normal exit leaves it alone. ``client.bulk_export_job(status_url)`` resumes watching a job
after a restart. The kick-off lives in :mod:`._kickoff`, the manifest in :mod:`._manifest`, reading files in
:mod:`._files`, :mod:`._resources` (streaming) and :mod:`._download` (to disk).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio
import httpx

from .. import _json, _retry
from .._config import FHIR_JSON, LOGGER_NAME
from .._errors import (
    BulkExportError,
    FHIRStatusError,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)
from .._http import HTTPSession
from .._urls import join_url, redact_url
from ._files import FileSource
from ._manifest import (
    BulkManifest,
    BulkProgress,
    PollCadence,
    parse_manifest,
    parse_progress_percent,
    retry_after_delay,
)
from ._resources import BulkResourceStream

if TYPE_CHECKING:
    from ._download import BulkDownloadResult, BulkTransferStats

__all__ = ["BulkExportJob", "ProgressCallback", "outcome_error"]

logger = logging.getLogger(f"{LOGGER_NAME}.bulk")

ProgressCallback = Callable[[BulkProgress], object]


def outcome_error(message: str, exc: FHIRStatusError) -> BulkExportError:
    return BulkExportError(
        f"{message}: {exc}", operation_outcome=exc.operation_outcome, status_code=exc.status_code
    )


class BulkExportJob:
    """A running (or finished) ``$export`` job, known by its status URL.

    ``status_url`` is set at once: persist it and pass it to ``client.bulk_export_job(url)`` after a restart.
    ``manifest`` is set once :meth:`wait` returned. ``allow_foreign_files``: fetch output files on another
    origin than the FHIR server (without the token; a CDN's signed URLs); by default such a URL raises
    :class:`~epic_fhir_async.UnsafeURLError`, since a manifest pointing elsewhere is more often a mistake than
    a feature, and Epic serves its files from the FHIR origin.
    """

    def __init__(
        self,
        session: HTTPSession,
        status_url: str,
        *,
        cadence: PollCadence | None = None,
        allow_foreign_files: bool = False,
    ) -> None:
        self._session = session
        # Relative URLs resolve against the FHIR base; another origin raises UnsafeURLError (it would get the token).
        self.status_url = str(session.url(status_url))
        self.cadence = cadence or PollCadence()
        self.allow_foreign_files = allow_foreign_files
        self.manifest: BulkManifest | None = None
        self.polls = 0

    def __repr__(self) -> str:
        state = "complete" if self.manifest is not None else "pending"
        return f"BulkExportJob(status_url={redact_url(self.status_url)!r}, {state})"

    # ------------------------------------------------------------------------------------------ polling

    async def wait(
        self,
        *,
        poll_interval: float | None = None,
        max_interval: float | None = None,
        progress: ProgressCallback | None = None,
        max_transient_errors: int = _retry.STATUS_POLL_RETRY.max_attempts - 1,
    ) -> BulkManifest:
        """Poll the status URL until the manifest is ready; return it (paged manifests merged).

        Honours ``Retry-After`` (see :func:`~epic_fhir_async.bulk._manifest.retry_after_delay`), else polls
        every ``poll_interval`` seconds doubling up to ``max_interval`` (defaults from :class:`PollCadence`:
        2 s up to Epic's recommended 10 minutes). ``progress`` (sync or async) gets a :class:`BulkProgress`
        per poll. Transient failures (5xx, 429, connection errors) are retried with the same cadence up to
        ``max_transient_errors`` in a row. Every poll goes through the client's auth, so a token manager
        re-mints expired tokens during multi-day waits. Set a deadline with ``anyio.fail_after``.
        """
        cadence = self.cadence
        if poll_interval is not None or max_interval is not None:
            initial = poll_interval if poll_interval is not None else cadence.initial
            cadence = PollCadence(
                initial=initial,
                maximum=max(initial, max_interval if max_interval is not None else cadence.maximum),
                factor=cadence.factor,
                max_retry_after=cadence.max_retry_after,
                min_delay=min(cadence.min_delay, initial),
            )
        started = anyio.current_time()
        quiet = 0  # consecutive polls without a usable Retry-After (drives the backoff)
        policy = replace(_retry.STATUS_POLL_RETRY, max_attempts=max(1, max_transient_errors + 1))
        transient = _retry.Retrying(policy)
        while True:
            self.polls += 1
            transient.attempt += 1
            try:
                response = await self._session.request(
                    "GET", self.status_url, headers={"Accept": FHIR_JSON}, resource=True
                )
            except (ServerError, RateLimited, TransportError) as exc:
                if transient.attempt > max_transient_errors:
                    raise BulkExportError(
                        f"status polling failed {transient.attempt} times in a row: {exc}",
                        status_code=getattr(exc, "status_code", None),
                    ) from exc
                # The server's Retry-After, read once by the shared parser (epoch values are instants), within
                # the cadence's bounds; otherwise the cadence's backoff.
                delay = retry_after_delay(getattr(exc, "retry_after", None), cadence)
                if delay is None:
                    delay = cadence.backoff(transient.attempt - 1)
                logger.info("bulk status poll failed (%s); retrying in %.1f s", type(exc).__name__, delay)
                await anyio.sleep(delay)
                continue
            except NotFound as exc:
                raise outcome_error(
                    "the export job is gone (deleted, expired, or never existed); start a new export", exc
                ) from exc
            except (
                FHIRStatusError
            ) as exc:  # Bulk spec: a 4xx/5xx with an OperationOutcome = the export failed
                raise outcome_error("the export failed", exc) from exc
            transient.attempt = 0
            if response.status_code == 200:
                manifest = await self._read_manifest(response)
                await _call(
                    progress,
                    BulkProgress(
                        self.status_url, "complete", 100.0, self.polls, _since(started), None, done=True
                    ),
                )
                return manifest
            if response.status_code != 202:
                raise BulkExportError(
                    f"unexpected status {response.status_code} from the bulk status URL",
                    status_code=response.status_code,
                )
            hinted = retry_after_delay(response.headers.get("retry-after"), cadence)
            if hinted is None:
                hinted = cadence.backoff(quiet)
                quiet += 1
            text = response.headers.get("x-progress")
            await _call(
                progress,
                BulkProgress(
                    self.status_url, text, parse_progress_percent(text), self.polls, _since(started), hinted
                ),
            )
            await anyio.sleep(hinted)

    async def _read_manifest(self, response: httpx.Response) -> BulkManifest:
        manifest, next_url = _manifest_of(response)
        seen = {self.status_url}
        while next_url is not None:
            url = str(join_url(response.url, next_url))
            if url in seen:
                raise BulkExportError("the manifest's next link repeats")
            seen.add(url)
            response = await self._session.request("GET", url, headers={"Accept": FHIR_JSON}, resource=True)
            page, next_url = _manifest_of(response)
            manifest = manifest.merged(page)
        self.manifest = manifest
        return manifest

    async def status(self) -> BulkManifest | BulkProgress:
        """One poll: the manifest when complete, else the current :class:`BulkProgress` (no waiting)."""
        response = await self._session.request(
            "GET", self.status_url, headers={"Accept": FHIR_JSON}, resource=True
        )
        if response.status_code == 200:
            return await self._read_manifest(response)
        text = response.headers.get("x-progress")
        delay = retry_after_delay(response.headers.get("retry-after"), self.cadence)
        return BulkProgress(self.status_url, text, parse_progress_percent(text), 1, 0.0, delay)

    # -------------------------------------------------------------------------------- cancel and delete

    async def cancel(self) -> None:
        """Cancel the export (``DELETE`` the status URL); a job already gone (404/410) counts as cancelled."""
        try:
            await self._session.request(
                "DELETE", self.status_url, headers={"Accept": FHIR_JSON}, resource=True
            )
        except NotFound:
            logger.info("bulk export %s was already gone", redact_url(self.status_url))
        except FHIRStatusError as exc:
            raise outcome_error("cancelling the export failed", exc) from exc

    async def delete(self) -> None:
        """Delete a finished export's files on the server. Epic allows one export per client and Group at a
        time, so call this after downloading to free the slot. Same request as :meth:`cancel`."""
        await self.cancel()

    # ------------------------------------------------------------------------------------------- files

    def require_manifest(self) -> BulkManifest:
        if self.manifest is None:
            raise BulkExportError("the export is not complete: await job.wait() first")
        return self.manifest

    def _files(self, *, deleted: bool = False) -> FileSource:
        manifest = self.require_manifest()
        return FileSource(
            self._session,
            self.status_url,
            manifest,
            self.allow_foreign_files,
            files=manifest.deleted if deleted else None,
        )

    def resources(
        self,
        types: Sequence[str] | None = None,
        *,
        concurrency: int = 4,
        buffer: int = 4,
        verify: bool = True,
    ) -> BulkResourceStream:
        """Every resource of the output files (of ``types``), parsed; see :class:`BulkResourceStream`.

        ``async with job.resources() as stream: async for r in stream`` reads ``concurrency`` files at once;
        a bare ``async for r in job.resources()`` reads them one after another in the caller's task (an async
        generator must not yield inside a task group). ``verify`` checks each file's line count against the
        manifest's ``count``.
        """
        return BulkResourceStream(self._files(), types, concurrency=concurrency, buffer=buffer, verify=verify)

    def deleted(
        self,
        types: Sequence[str] | None = None,
        *,
        concurrency: int = 4,
        buffer: int = 4,
        verify: bool = True,
    ) -> BulkResourceStream:
        """The manifest's ``deleted`` files (of ``types``), parsed: one Bundle per line listing resources deleted
        since ``_since`` (a ``request`` of ``DELETE Type/id`` per entry). Used like :meth:`resources`."""
        return BulkResourceStream(
            self._files(deleted=True), types, concurrency=concurrency, buffer=buffer, verify=verify
        )

    async def download(
        self,
        directory: str | os.PathLike[str],
        *,
        types: Sequence[str] | None = None,
        concurrency: int = 4,
        include_errors: bool = True,
        include_deleted: bool = True,
        stats: BulkTransferStats | None = None,
    ) -> BulkDownloadResult:
        """Write the output, error and deleted files into ``directory``; see :func:`._download.download`."""
        from ._download import download  # loaded when first needed: streaming does not use it

        return await download(
            self._files(),
            directory,
            types=types,
            concurrency=concurrency,
            include_errors=include_errors,
            include_deleted=include_deleted,
            stats=stats,
        )


def _since(started: float) -> float:
    return anyio.current_time() - started


async def _call(callback: ProgressCallback | None, event: BulkProgress) -> None:
    if callback is None:
        return
    result = callback(event)
    if inspect.isawaitable(result):
        await result


def _manifest_of(response: httpx.Response) -> tuple[BulkManifest, str | None]:
    try:
        return parse_manifest(_json.loads(response.content))
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise BulkExportError(f"the export manifest is not valid: {exc}") from None
