"""EpicFHIRClient: one pooled ``httpx.AsyncClient``, typed errors, the FHIR interactions Epic supports."""

from __future__ import annotations

import copy
import warnings
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

import httpx

from ._config import (
    DEFAULT_TIMEOUT,
    FHIR_JSON,
    MAX_NDJSON_LINE_BYTES,
    MAX_PAGES,
    MAX_RESOURCE_BYTES,
    MAX_RESPONSE_BYTES,
    USER_AGENT,
)
from ._errors import ClientClosed, ConfigurationError, EpicFHIRError
from ._http import HTTPSession
from ._retry import RetryPolicy
from ._search import SearchQuery
from ._urls import check_id, check_operation, check_type, is_loopback, redact_url
from .auth._epic_auth import EpicAuth

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    import anyio
    from fhir.resources.R4B.resource import Resource

    from .bulk import BulkExportJob, BulkExportStart, PollCadence
    from .pull import EpicExpansion, PullProgress, PullStream, StreamCheckpoint

__all__ = ["EpicFHIRClient", "NoRetryWarning"]

#: What ``retry=False`` means on a client that builds its own transport: one attempt, so no retry and no 429
#: pause either (the gate closes only when a retry is planned).
_ONE_ATTEMPT = RetryPolicy(max_attempts=1)


class NoRetryWarning(UserWarning):
    """``EpicFHIRClient(http_client=...)`` without ``retry=False``: the client you pass is used as it is, so the
    SDK's retries (408/429/5xx, dropped connections) and its shared 429 pause are not under it.

    Share one client's pool between users with :meth:`EpicFHIRClient.with_auth` instead, or customise the
    connection with ``transport=`` (wrapped in :class:`RetryTransport`); to keep your client, build it on
    ``RetryTransport(...)`` (or accept no retries) and pass ``retry=False`` to say so.
    """


class EpicFHIRClient:
    """Async client for an Epic FHIR R4 server; use as ``async with EpicFHIRClient(base_url, auth=...)``.

    ``timeout`` (seconds) is the deadline of one attempt of a request: connect, send, the response head and
    the body together (a streamed body must instead keep a minimum pace), :class:`RequestTimeout` past it;
    with retries one call ends within ``retry.max_attempts * timeout + retry.max_total_wait`` (420 s by
    default). ``transport`` is wrapped in :class:`RetryTransport` with ``retry`` (unless it is a
    ``RetryTransport`` already); ``retry=False``: one attempt, no retry and no 429 pause. A caller-owned
    ``http_client`` is used as-is (never closed here) and carries every request, the auth's token requests
    included; the SDK cannot put its retries under a client it did not build, so pass ``retry=False`` with it
    to accept that (or build it on :class:`RetryTransport`): without it you get a :class:`NoRetryWarning`,
    and a ``RetryPolicy`` with it is a :class:`ConfigurationError`. To share one pool between users, use
    :meth:`with_auth` rather than ``http_client``. Plain ``http://`` is refused except on loopback (or with
    your own client).
    ``max_response_bytes`` bounds a search page (and any body read whole by ``request``/``binary``),
    ``max_resource_bytes`` a body holding one resource (reads, operations, the CapabilityStatement, bulk
    status and manifests), ``max_ndjson_line_bytes`` one line of a bulk file, so a hostile server cannot
    exhaust memory (:class:`ResponseTooLarge`; ``None`` lifts the first two). ``max_pages`` stops a search
    after that many pages (:class:`PagingError`; ``None``: no cap; per query: ``SearchQuery.with_max_pages``).
    ``pause_gc``: pause Python's cyclic garbage collector while a response body is parsed (restored exactly
    as it was right after; see docs/performance.md), a large saving on big pages; ``False`` never touches it.
    ``http_backend="aiohttp"`` (asyncio only, the ``fast`` extra) sends through aiohttp instead of httpcore:
    less CPU per request; every limit, deadline and origin rule holds the same.
    ``epic_rules`` (default True): searches are checked against Epic's search requirements before they are
    sent (:meth:`search`) and a bulk ``since=`` is refused before the kick-off (Epic rejects ``_since``); pass
    False for a FHIR server that is not Epic.
    Once closed (``aclose()`` or the end of ``async with``) every call raises :class:`ClientClosed`.
    """

    def __init__(
        self,
        base_url: str | httpx.URL,
        *,
        auth: EpicAuth | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http2: bool = False,
        retry: RetryPolicy | Literal[False] | None = None,
        epic_client_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_response_bytes: int | None = MAX_RESPONSE_BYTES,
        max_resource_bytes: int | None = MAX_RESOURCE_BYTES,
        max_ndjson_line_bytes: int = MAX_NDJSON_LINE_BYTES,
        max_pages: int | None = MAX_PAGES,
        pause_gc: bool = True,
        http_backend: Literal["httpx", "aiohttp"] = "httpx",
        epic_rules: bool = True,
    ) -> None:
        _check_auth(auth)
        if http_backend not in ("httpx", "aiohttp"):
            raise ConfigurationError(f"http_backend must be 'httpx' or 'aiohttp', got {http_backend!r}")
        if http_backend == "aiohttp" and (transport is not None or http_client is not None or http2):
            raise ConfigurationError(
                "http_backend='aiohttp' builds its own transport: drop transport=, http_client= and http2="
            )
        if retry is not None and retry is not False and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(
                f"retry must be a RetryPolicy, or False for no retries, got {type(retry).__name__}"
            )
        if http_client is not None and isinstance(retry, RetryPolicy):
            raise ConfigurationError(
                "retry= cannot apply to your own http_client (its transport is yours): build that client on "
                "RetryTransport(inner, policy=...) and pass retry=False, or drop http_client= (to share one "
                "pool between users, use client.with_auth(auth))"
            )
        if http_client is not None and retry is None:
            warnings.warn(
                "EpicFHIRClient(http_client=...) uses your client as it is: no retries and no shared 429 pause "
                "unless its transport is a RetryTransport. To share one pool between users use "
                "client.with_auth(auth); to customise connections pass transport=; to keep your client, pass "
                "retry=False to say so.",
                NoRetryWarning,
                stacklevel=2,
            )
        url = httpx.URL(str(base_url).rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError("base_url must be an absolute http(s) URL of the FHIR R4 base")
        if url.scheme == "http" and http_client is None and not is_loopback(url.host):
            raise ConfigurationError(
                f"refusing plain http:// for {redact_url(url)}: bearer tokens need TLS (loopback is allowed; "
                "pass your own http_client to override)"
            )
        self.base_url = url
        self.auth = auth
        #: Epic's search requirements are checked before a search is sent, and ``since=`` is refused before a
        #: bulk kick-off (Epic rejects ``_since``); False for a server that is not Epic.
        self.epic_rules = bool(epic_rules)
        base_headers = {"Accept": FHIR_JSON, "User-Agent": USER_AGENT}
        if epic_client_id:
            base_headers["Epic-Client-ID"] = epic_client_id
        if headers:
            base_headers.update(headers)
        self._session = HTTPSession(
            url,
            headers=base_headers,
            http_client=http_client,
            transport=transport,
            timeout=timeout,
            http2=http2,
            retry=_ONE_ATTEMPT if retry is False else retry,
            max_response_bytes=max_response_bytes,
            max_resource_bytes=max_resource_bytes,
            max_ndjson_line_bytes=max_ndjson_line_bytes,
            max_pages=max_pages,
            pause_gc=pause_gc,
            http_backend=http_backend,
        )
        if auth is not None:
            auth.bind(self._session)
            self._session.auth = auth

    @property
    def http(self) -> httpx.AsyncClient:
        """The pooled ``httpx.AsyncClient`` every request goes through (yours, when you passed ``http_client``)."""
        return self._session.http

    @property
    def max_response_bytes(self) -> int | None:
        return self._session.max_response_bytes

    @property
    def max_resource_bytes(self) -> int | None:
        return self._session.max_resource_bytes

    @property
    def timeout(self) -> float:
        """The deadline of one attempt of a request, in seconds."""
        return self._session.timeout

    @property
    def max_ndjson_line_bytes(self) -> int:
        return self._session.max_ndjson_line_bytes

    def __repr__(self) -> str:
        return f"EpicFHIRClient({redact_url(self.base_url)!r})"

    async def __aenter__(self) -> EpicFHIRClient:
        if self.http.is_closed:
            raise ClientClosed(self._session.closed_message())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close our HTTP client (a caller-owned one is left open; a :meth:`with_auth` view closes nothing)."""
        await self._session.aclose()

    def with_auth(self, auth: EpicAuth) -> EpicFHIRClient:
        """A view of this client that sends ``auth``'s token: one signed-in user's client in a web app.

        The view shares everything else with this client: the connection pool, the retry policy and its one
        429 pause, the size limits, the deadlines and the headers. Making one costs a few microseconds
        (``python -m benchmarks web``), so make one per request: ``async with client.with_auth(auth) as fhir``
        (leaving the block closes nothing; the pool lives until this client is closed). ``auth`` is bound to
        the view (a :class:`SmartAuth` for another server is a :class:`ConfigurationError`); this client's own
        ``auth``, if any, is not used by the view.
        """
        if auth is None:
            raise ConfigurationError("with_auth needs an auth method (the user's SmartAuth, for example)")
        _check_auth(auth)
        session = self._session.with_auth(auth)
        auth.bind(session)
        view = copy.copy(self)  # every attribute the client has, whatever later versions add
        view.auth = auth
        view._session = session
        return view

    # -- low level: any request on the FHIR server, with the client's auth, limits and typed errors ------

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        data: Mapping[str, Any] | None = None,
        allow_foreign_origin: bool = False,
        retry_safe: bool = False,
    ) -> httpx.Response:
        """Send a request; the body is read under ``max_response_bytes`` and the status checked (typed errors).

        Relative URLs resolve against the base. ``allow_foreign_origin`` permits another origin (no token is
        sent there). ``retry_safe`` lets the retrying transport repeat a POST.
        """
        return await self._session.request(
            method,
            url,
            params=params,
            headers=headers,
            json=json,
            content=content,
            data=data,
            allow_foreign_origin=allow_foreign_origin,
            retry_safe=retry_safe,
        )

    def stream(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        allow_foreign_origin: bool = False,
    ) -> AbstractAsyncContextManager[httpx.Response]:
        """``async with client.stream("GET", url) as response``: the status checked, the body left unread."""
        return self._session.stream(
            method, url, params=params, headers=headers, allow_foreign_origin=allow_foreign_origin
        )

    # -- FHIR interactions ------------------------------------------------------------------------------

    async def capabilities(self) -> dict[str, Any]:
        """The server's CapabilityStatement (``GET metadata``)."""
        return await self._session.json("GET", "metadata")

    @overload
    async def read(
        self, resource_type: str, resource_id: str, *, model: Literal[False] = False
    ) -> dict[str, Any]: ...

    @overload
    async def read(self, resource_type: str, resource_id: str, *, model: Literal[True]) -> Resource: ...

    @overload
    async def read(
        self, resource_type: str, resource_id: str, *, model: bool
    ) -> dict[str, Any] | Resource: ...

    async def read(self, resource_type: str, resource_id: str, *, model: bool = False) -> Any:
        """``GET [type]/[id]``; unknown ids raise :class:`NotFound` (Epic code 59008).

        A type or id that is not a valid FHIR name raises :class:`ConfigurationError` before anything is sent
        (``"patient"``, ``"../metadata"``, an id with ``/``, ``?``, ``#`` or spaces). ``model=True`` returns
        a typed fhir.resources model instead of the dict (the ``models`` extra; see
        :mod:`epic_fhir_async.models`).
        """
        resource = await self._session.json("GET", f"{check_type(resource_type)}/{check_id(resource_id)}")
        if not model:
            return resource
        from .models import to_model  # the models extra, loaded only when asked for

        return to_model(resource)

    def search(self, resource_type: str, /, **params: Any) -> SearchQuery:
        """An immutable :class:`SearchQuery`; nothing is sent until it is iterated or awaited.

        Before the first request the search is checked against Epic's requirements (Observation needs a
        patient and a category or code, Patient needs ``_id``, ``identifier`` or two demographics, ...,
        docs/epic-notes.md §3.3): one Epic refuses raises :class:`ConfigurationError` naming what to add.
        ``epic_rules=False`` on the client, or ``query.with_epic_rules(False)``, sends it as it is.
        """
        return SearchQuery(self._session, resource_type, params, epic_rules=self.epic_rules)

    def pull(
        self,
        patients: Iterable[str] | AsyncIterable[str],
        types: Iterable[str] | str,
        *,
        concurrency: int | anyio.CapacityLimiter = 8,
        expand: bool | EpicExpansion = True,
        on_error: Literal["raise", "collect"] = "raise",
        checkpoint: StreamCheckpoint | None = None,
        progress: Callable[[PullProgress], object] | None = None,
        buffer: int = 16,
        keep_outcomes: bool = True,
    ) -> PullStream:
        """Pull ``types`` for every patient concurrently: ``async with client.pull(...) as s: async for item in s``
        (fetching overlaps your processing), or a bare ``async for item in client.pull(...)`` (rounds of up to
        ``concurrency`` pages fetched inside the loop's steps; nothing runs between items).

        ``types`` are resource types or query templates (``"Observation?category=laboratory"``), expanded by
        Epic's search rules unless ``expand=False``; at most ``concurrency`` searches run at once; ``buffer``
        pages wait for the consumer before the producers pause. See :mod:`epic_fhir_async.pull`.
        """
        from .pull._stream import pull  # the pull machinery is loaded only by callers who use it

        session = self._session
        return pull(
            self,
            patients,
            types,
            concurrency=concurrency,
            expand=expand,
            on_error=on_error,
            checkpoint=checkpoint,
            progress=progress,
            buffer=buffer,
            keep_outcomes=keep_outcomes,
            retries=lambda: session.retries,
        )

    async def create(self, resource: Mapping[str, Any]) -> dict[str, Any] | None:
        """``POST [type]``; returns the created resource when the server sends one (never retried)."""
        session = self._session
        response = await session.request(
            "POST", check_type(_field(resource, "resourceType")), json=resource, resource=True
        )
        return session.decode(response) if response.content else None

    async def update(self, resource: Mapping[str, Any]) -> dict[str, Any] | None:
        """``PUT [type]/[id]``; returns the updated resource when the server sends one."""
        resource_type = check_type(_field(resource, "resourceType"))
        path = f"{resource_type}/{check_id(_field(resource, 'id'))}"
        response = await self._session.request("PUT", path, json=resource, resource=True)
        return self._session.decode(response) if response.content else None

    async def operation(
        self,
        name: str,
        *,
        type: str | None = None,
        id: str | None = None,
        params: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
        method: str = "GET",
    ) -> dict[str, Any]:
        """Run ``$name`` at system, type or instance level (``Patient/$match`` is POST with Parameters)."""
        parts = [] if type is None else [check_type(type)]
        if id is not None:
            if type is None:
                raise ConfigurationError("an instance-level operation needs type= as well as id=")
            parts.append(check_id(id))
        path = "/".join([*parts, check_operation(name)])
        if parameters is not None:
            method = "POST"
        return await self._session.json(method, path, params=params, json=parameters)

    async def binary(
        self, url_or_id: str, *, content_type: str = "application/octet-stream"
    ) -> tuple[bytes, str]:
        """Raw bytes and Content-Type of a ``Binary`` (id, ``Binary/<id>`` or same-origin URL), asking ``Accept``
        ``content_type`` (Epic serves DocumentReference notes as text/html and text/rtf)."""
        target = _binary_target(url_or_id)
        response = await self._session.request("GET", target, headers={"Accept": content_type})
        return response.content, response.headers.get("content-type", content_type)

    async def attachment(self, attachment: Mapping[str, Any]) -> tuple[bytes, str]:
        """The bytes of a FHIR Attachment: inline ``data`` (base64) or its ``url`` with its ``contentType``."""
        content_type = str(attachment.get("contentType") or "application/octet-stream")
        data = attachment.get("data")
        if isinstance(data, str):
            import base64

            return base64.b64decode(data), content_type
        url = attachment.get("url")
        if not isinstance(url, str) or not url:
            raise EpicFHIRError("the attachment has neither data nor url")
        return await self.binary(url, content_type=content_type)

    # -- bulk $export ------------------------------------------------------------------------------------

    def bulk_export(
        self,
        group_id: str | None = None,
        *,
        types: Iterable[str] | None = None,
        type_filters: Iterable[str] | None = None,
        since: str | None = None,
        patient_level: bool = False,
        output_format: str | None = None,
        method: Literal["GET", "POST"] = "GET",
        extra_params: Mapping[str, str] | None = None,
        cadence: PollCadence | None = None,
        allow_foreign_files: bool = False,
    ) -> BulkExportStart:
        """Kick off a Bulk Data ``$export``: ``job = await client.bulk_export(...)`` or ``async with`` it.

        Group-level with ``group_id`` (Epic's only level: docs/epic-notes.md §4.1); ``patient_level=True`` or
        neither for servers with Patient- or system-level export. ``since`` (``_since``) is refused with
        :class:`ConfigurationError` before the kick-off, because Epic does not support it (docs/epic-notes.md
        §4.1): filter by date with ``type_filters`` instead, or pass ``epic_rules=False`` to the client for a
        server that supports ``_since``. See :mod:`epic_fhir_async.bulk`.
        """
        from .bulk._kickoff import BulkExportStart

        if group_id is not None:
            check_id(group_id, what="group id")
        return BulkExportStart(
            self._session,
            group_id=group_id,
            patient_level=patient_level,
            types=list(types) if types is not None else None,
            type_filters=list(type_filters) if type_filters is not None else None,
            since=since,
            output_format=output_format,
            method=method,
            extra_params=extra_params,
            cadence=cadence,
            allow_foreign_files=allow_foreign_files,
            epic_rules=self.epic_rules,
        )

    def bulk_export_job(
        self, status_url: str, *, cadence: PollCadence | None = None, allow_foreign_files: bool = False
    ) -> BulkExportJob:
        """Resume watching an export from its saved status URL (after a restart or crash)."""
        from .bulk._job import BulkExportJob

        return BulkExportJob(
            self._session, status_url, cadence=cadence, allow_foreign_files=allow_foreign_files
        )


def _check_auth(auth: object) -> None:
    if auth is None or isinstance(auth, EpicAuth):
        return
    if isinstance(auth, (str, bytes)):
        # The string is most likely a bearer token: never shown.
        raise ConfigurationError(
            'auth must be an EpicAuth, not a string: wrap a bearer token as auth=StaticTokenAuth("...") '
            "(or use BackendServicesAuth / SmartAuth to get tokens)"
        )
    raise ConfigurationError(
        f"auth must be an EpicAuth (BackendServicesAuth, StaticTokenAuth, SmartAuth, ...), got {type(auth).__name__}"
    )


def _field(resource: Mapping[str, Any], name: str) -> Any:
    if not isinstance(resource, Mapping):
        raise ConfigurationError(f"expected a FHIR resource (a dict), got {type(resource).__name__}")
    if name not in resource:
        raise ConfigurationError(f"the resource has no {name!r}: set it before sending")
    return resource[name]


def _binary_target(url_or_id: str) -> str:
    """A Binary id, a relative ``Binary/<id>`` reference (Epic's attachments) or an absolute URL or path (left
    to :meth:`HTTPSession.url`, which refuses other origins)."""
    if not isinstance(url_or_id, str):
        raise ConfigurationError(f"expected a Binary id or URL, got {type(url_or_id).__name__}")
    if "://" in url_or_id or url_or_id.startswith("/"):
        return url_or_id
    kind, slash, rest = url_or_id.partition("/")
    if not slash:
        return f"Binary/{check_id(url_or_id, what='Binary id')}"
    if kind != "Binary":
        raise ConfigurationError(
            "a relative attachment URL must be 'Binary/<id>' (as Epic sends them); pass an absolute URL otherwise"
        )
    return f"Binary/{check_id(rest, what='Binary id')}"
