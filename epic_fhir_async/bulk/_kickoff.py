"""Bulk Data ``$export`` kick-off (docs/epic-notes.md §4.1, §4.2): what ``client.bulk_export(...)`` returns.

Group-level at Epic (``GET [base]/Group/{id}/$export`` with ``Prefer: respond-async`` and
``Accept: application/fhir+json``); Patient- and system-level for servers that have them; GET with a query or
POST with a ``Parameters`` body. ``since`` is refused before anything is sent while the client keeps Epic's
rules (Epic rejects ``_since``). Epic's "The Client requested this Group too recently" becomes
:class:`~epic_fhir_async.BulkExportTooSoon` and is never retried; 5xx answers, rate-limit 429s and connections
that could not be opened are retried a few times (:data:`._retry.KICKOFF_RETRY`; the kick-off is sent past
the client's retrying transport, so that Epic's refusal is never repeated nor closes the shared 429 gate).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import anyio
import httpx

from .. import _json, _retry
from .._config import FHIR_JSON, LOGGER_NAME
from .._errors import (
    BulkExportError,
    BulkExportTooSoon,
    ConfigurationError,
    FHIRStatusError,
    RateLimited,
    ServerError,
    TransportError,
    UnexpectedContentError,
)
from .._http import HTTPSession
from .._urls import join_url, redact_url
from ._job import BulkExportJob, outcome_error
from ._manifest import PollCadence, is_too_recent, kickoff_parameters, kickoff_query

__all__ = ["BulkExportStart"]

logger = logging.getLogger(f"{LOGGER_NAME}.bulk")

#: Seconds the shielded DELETE may take when an ``async with`` block is left early.
_CANCEL_TIMEOUT = 30.0


class BulkExportStart:
    """What ``client.bulk_export(...)`` returns: ``await`` it for the job, or ``async with`` it.

    In the ``async with`` form, an exception or cancellation inside the block cancels the job (``DELETE``) in
    a shielded scope bounded to 30 s, so a crashed or interrupted run does not keep Epic's one export slot.
    """

    def __init__(
        self,
        session: HTTPSession,
        *,
        group_id: str | None,
        patient_level: bool,
        types: Sequence[str] | None,
        type_filters: Sequence[str] | None,
        since: str | None,
        output_format: str | None,
        method: Literal["GET", "POST"],
        extra_params: Mapping[str, str] | None,
        cadence: PollCadence | None,
        allow_foreign_files: bool,
        epic_rules: bool = True,
    ) -> None:
        if epic_rules and (since is not None or "_since" in (extra_params or {})):
            # Refused rather than warned about: Epic rejects _since (docs/epic-notes.md §4.1), so sending it
            # would spend a kick-off on a certain refusal, or, where a server ignored it, export everything while
            # the caller believes the export incremental.
            raise ConfigurationError(
                "Epic's Bulk Data $export does not support _since (docs/epic-notes.md §4.1): drop since= and "
                "filter by date with type_filters (e.g. 'Observation?date=ge2024-01-01'), or pass "
                "epic_rules=False to EpicFHIRClient for a server that supports _since"
            )
        if group_id is not None and patient_level:
            raise ConfigurationError("pass group_id or patient_level=True, not both")
        if method not in ("GET", "POST"):
            raise ConfigurationError("method must be 'GET' or 'POST'")
        self._session = session
        self._group_id = group_id
        self._patient_level = patient_level
        self._types = list(types) if types else None
        self._type_filters = list(type_filters) if type_filters else None
        self._since = since
        self._output_format = output_format
        self._method = method
        self._extra = dict(extra_params or {})
        self._cadence = cadence
        self._allow_foreign = allow_foreign_files
        self._job: BulkExportJob | None = None

    def __await__(self) -> Generator[Any, None, BulkExportJob]:
        return self._start().__await__()

    async def __aenter__(self) -> BulkExportJob:
        self._job = await self._start()
        return self._job

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        job = self._job
        if exc_type is None or job is None:
            return
        with anyio.move_on_after(_CANCEL_TIMEOUT, shield=True):
            try:
                await job.cancel()
            except Exception:  # the original exception matters more; never mask it
                logger.warning("could not cancel bulk export %s", redact_url(job.status_url), exc_info=True)
            else:
                logger.info("cancelled bulk export %s after an early exit", redact_url(job.status_url))

    def _path(self) -> str:
        if self._group_id is not None:
            return f"Group/{quote(self._group_id, safe='')}/$export"
        return "Patient/$export" if self._patient_level else "$export"

    async def _start(self) -> BulkExportJob:
        options: dict[str, Any] = {
            "types": self._types,
            "type_filters": self._type_filters,
            "since": self._since,
            "output_format": self._output_format,
            "extra": self._extra,
        }
        headers = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
        path = self._path()
        if self._method == "POST":
            headers["Content-Type"] = FHIR_JSON
            body: Any = kickoff_parameters(**options)
        else:
            query = kickoff_query(**options)
            path, body = (f"{path}?{query}" if query else path), None
        retrying = _retry.Retrying(_retry.KICKOFF_RETRY)
        content = _json.dumps(body) if body is not None else None
        while True:
            retrying.attempt += 1
            try:
                # Sent once per attempt (retry=False): this loop, not the transport, decides what is repeated.
                response = await self._session.request(
                    self._method, path, headers=headers, content=content, retry=False, resource=True
                )
                break
            except FHIRStatusError as exc:
                delay = _retry_delay(exc, retrying)
                if delay is None:
                    raise _kickoff_error(exc, self._group_id is None, retried=retrying.attempt > 1) from exc
            except UnexpectedContentError as exc:  # Epic's IIS page for a path it does not serve
                hint = "; Epic supports Group-level $export only" if self._group_id is None else ""
                raise BulkExportError(
                    f"the $export kick-off was refused{hint}: {exc}", status_code=exc.status_code
                ) from exc
            except TransportError as exc:
                delay = _retry_delay(exc, retrying)
                if delay is None:
                    raise
            logger.info("the $export kick-off failed transiently; retrying in %.1f s", delay)
            await anyio.sleep(delay)
        location = response.headers.get("content-location")
        if response.status_code != 202 or not location:
            raise BulkExportError(
                f"the $export kick-off answered {response.status_code} without a Content-Location status URL",
                status_code=response.status_code,
            )
        job = BulkExportJob(
            self._session,
            str(join_url(response.url, location)),
            cadence=self._cadence,
            allow_foreign_files=self._allow_foreign,
        )
        logger.info("bulk export started; status URL %s", redact_url(job.status_url))
        return job


def _retry_delay(exc: FHIRStatusError | TransportError, retrying: _retry.Retrying) -> float | None:
    """Seconds before re-sending a failed kick-off, or ``None`` when it must not be re-sent.

    Only failures where the server most likely started nothing: a 5xx, a plain rate-limit 429 (never Epic's
    "too recently", which is not transient), a connection that could not be opened. If a 5xx came after the
    job was created after all, the retry ends in :class:`BulkExportTooSoon`, as a caller's own retry would.
    """
    if isinstance(exc, TransportError):
        cause = exc.__cause__
        if not isinstance(cause, (httpx.ConnectError, httpx.ConnectTimeout)):
            return None
        return retrying.next_delay()
    if isinstance(exc, RateLimited) and not is_too_recent(exc.operation_outcome):
        return retrying.next_delay(retry_after=exc.retry_after)
    if isinstance(exc, ServerError) and exc.status_code in (500, 502, 503, 504):
        return retrying.next_delay()
    return None


def _kickoff_error(exc: FHIRStatusError, not_group: bool, *, retried: bool = False) -> BulkExportError:
    if is_too_recent(exc.operation_outcome):
        retry_after = getattr(exc, "retry_after", None)
        when = f"; retry in {retry_after:.0f} s" if isinstance(retry_after, (int, float)) else ""
        if retried:
            when += (
                "; an earlier attempt of this kick-off failed and may have started the export: its status "
                "URL was never received, cancel it from Epic's side or wait for it to expire"
            )
        return BulkExportTooSoon(
            "Epic refused the $export kick-off: the client requested this Group too recently, or an export of "
            "it is still running (one per client and Group; cancel it with job.cancel() or wait for the "
            f"customer-configured window){when}",
            retry_after=retry_after if isinstance(retry_after, (int, float)) else None,
            operation_outcome=exc.operation_outcome,
            status_code=exc.status_code,
        )
    hint = "; Epic supports Group-level $export only" if not_group and exc.status_code == 404 else ""
    return outcome_error(f"the $export kick-off was refused{hint}", exc)
