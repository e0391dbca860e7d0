"""The HTTP session: every request the SDK makes goes through it.

FHIR interactions (:meth:`HTTPSession.request`: body read under the size limit, status checked, typed errors;
:meth:`HTTPSession.stream`: status checked, body left to the caller), and the requests that must not carry
the client's bearer flow (:meth:`HTTPSession.send`: token requests, SMART discovery, id_token keys). This is
the one module that turns httpx exceptions into :class:`TransportError` / :class:`RequestTimeout`, the one
that reads bodies under a limit (:func:`read_limited`), and the one that builds typed errors from error
responses (:func:`error_from_response`).

Under the pooled ``httpx.AsyncClient`` sits :class:`RetryTransport` (retries with one 429 gate for the whole
client), built with the client's :class:`~epic_fhir_async.RetryPolicy`. The bearer token only ever travels to
the FHIR base's origin: a next link, redirect or URL elsewhere is refused (or, when allowed, sent without it).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import Any, Literal, cast

import anyio
import httpx

from . import _json
from ._config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    FHIR_JSON,
    JSON_CONTENT_TYPES,
    LOGGER_NAME,
    MAX_NDJSON_LINE_BYTES,
    MAX_RESPONSE_BYTES,
    USER_AGENT,
)
from ._errors import (
    BadRequest,
    ClientClosed,
    Conflict,
    EpicFHIRError,
    FHIRStatusError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    RequestTimeout,
    ResponseTooLarge,
    ServerError,
    TransportError,
    Unauthorized,
    UnexpectedContentError,
    UnprocessableEntity,
    UnsafeURLError,
)
from ._headers import media_type, parse_retry_after, parse_www_authenticate
from ._outcome import OperationOutcome, outcome_summary
from ._retry import (
    NO_RETRY,
    READ_BODY,
    RETRY_SAFE,
    RetryPolicy,
    is_retryable_method,
    retry_delay,
    should_retry,
)
from ._urls import join_url, redact_url, same_origin

__all__ = [
    "HTTPSession",
    "RetryTransport",
    "error_from_response",
    "read_limited",
    "transport_error",
]

log = logging.getLogger(f"{LOGGER_NAME}.retry")

_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


# -- the one mapping of httpx exceptions ------------------------------------------------------------------


def transport_error(exc: Exception, method: str, url: httpx.URL | str, *, what: str = "") -> EpicFHIRError:
    """The SDK's error for an httpx exception raised while sending ``method url``.

    ``what`` names the request in the message (``"token request to"``). The httpx exception goes on
    ``__cause__``; its text is never copied into ours, since it can hold header values.
    """
    shown = redact_url(url)
    name = type(exc).__name__
    if isinstance(exc, httpx.InvalidURL):  # httpx pre-builds the redirect of a malformed Location and fails
        return EpicFHIRError(f"{what or method} {shown}: the server sent an invalid URL (not shown)")
    timeout = isinstance(exc, httpx.TimeoutException)
    if what:
        text = f"{what} {shown} timed out ({name})" if timeout else f"{what} {shown} failed: {name}"
    else:
        text = f"{name} during {method} {shown}"
    return (RequestTimeout if timeout else TransportError)(text, method=method, url=shown)


@contextmanager
def mapped_errors(method: str, url: httpx.URL | str, *, what: str = "") -> Iterator[None]:
    """Raise :func:`transport_error` for any httpx exception of the block."""
    try:
        yield
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise transport_error(exc, method, url, what=what) from exc


# -- bodies under a size limit ------------------------------------------------------------------------------


def too_large(request: httpx.Request, limit: int, what: str = "response body") -> ResponseTooLarge:
    return ResponseTooLarge(
        f"the {what} of {request.method} {redact_url(request.url)} is larger than {limit} bytes; raise the "
        "limit (EpicFHIRClient(max_response_bytes=...)) only for a server you trust",
        limit=limit,
    )


async def read_limited(
    response: httpx.Response, limit: int | None, *, request: httpx.Request | None = None
) -> None:
    """``await response.aread()``, but raise :class:`ResponseTooLarge` beyond ``limit`` bytes (None: no limit).

    ``request`` names the request in the error (a transport's response does not know it yet). On any error
    the response is closed (its connection goes back to the pool or is dropped).
    """
    try:
        response.content  # noqa: B018 - already read (by the retrying transport): nothing to do
        return
    except httpx.ResponseNotRead:
        pass
    if limit is None:
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        return
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        await response.aclose()
        raise too_large(request or response.request, limit)
    target = request or response.request
    chunks: list[bytes] = []
    size = 0

    def check() -> None:
        if size > limit:
            raise too_large(target, limit)

    # The limit is on the *decoded* size (a gzip bomb), counted here; the stop is raised from inside the raw
    # stream (_Checked) so every one of httpx's nested body generators ends normally: stopping from out
    # here would leave them suspended for the GC, which trio reports as a ResourceWarning.
    if isinstance(response.stream, httpx.AsyncByteStream):  # else an in-memory body, already bounded
        response.stream = _Checked(response.stream, check)
    try:
        async with aclosing(cast("AsyncGenerator[bytes, None]", response.aiter_bytes())) as body:
            async for chunk in body:
                size += len(chunk)
                if size <= limit:
                    chunks.append(chunk)
        check()  # the body ended right after the chunk that broke the limit
    except BaseException:
        await response.aclose()
        raise
    # What Response.aread() itself does once the body is in: later reads return it without a stream.
    response._content = b"".join(chunks)


class _Checked(httpx.AsyncByteStream):
    """The raw body, calling ``check`` before each chunk after the first (it raises to stop the read)."""

    def __init__(self, inner: httpx.AsyncByteStream, check: Callable[[], None]) -> None:
        self._inner = inner
        self._check = check

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = cast("AsyncGenerator[bytes, None]", self._inner.__aiter__())
        async with aclosing(chunks):
            async for chunk in chunks:
                self._check()
                yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- error responses ----------------------------------------------------------------------------------------

_STATUS_CLASSES: dict[int, type[FHIRStatusError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    410: NotFound,
    412: Conflict,
    422: UnprocessableEntity,
    429: RateLimited,
}


def _class_for(status: int) -> type[FHIRStatusError]:
    if status in _STATUS_CLASSES:
        return _STATUS_CLASSES[status]
    if status >= 500:
        return ServerError
    return FHIRStatusError


def _explain_challenge(status: int, challenge: Mapping[str, str]) -> str:
    # Epic's 401 and 403 carry no OperationOutcome (the 401 body is the two bytes "", docs/epic-notes.md
    # §3.7): the only clue is WWW-Authenticate.
    error = challenge.get("error")
    if error == "invalid_token":
        return "the access token is missing, expired or invalid (invalid_token)"
    if error == "insufficient_scope":
        return (
            "the token is valid but the app is not authorised for this API (insufficient_scope): add the "
            "Incoming API to the app and allow ~30 minutes for Epic's sync"
        )
    if status == 401:
        return "not authenticated"
    if status == 403:
        return "forbidden (no WWW-Authenticate detail)"
    return "empty body"


def error_from_response(response: httpx.Response) -> FHIRStatusError:
    """Build the typed error for an error ``response`` whose body has been read."""
    request = response.request
    method = request.method
    url = redact_url(request.url)
    status = response.status_code
    content_type = response.headers.get("content-type", "")
    media = media_type(content_type)
    challenge = parse_www_authenticate(response.headers.get("www-authenticate"))
    outcome: OperationOutcome | None = None
    body = response.content
    if body and media in JSON_CONTENT_TYPES:
        try:
            outcome = OperationOutcome.from_json(_json.loads(body))
        except ValueError:
            outcome = None
    if outcome is not None and outcome.issues:
        detail = outcome_summary(outcome)
    elif status in (401, 403) or not body.strip():
        # Whatever the body ("" at Epic, empty, an HTML page): the challenge is what explains a 401/403.
        detail = _explain_challenge(status, challenge)
    else:
        detail = f"non-FHIR body ({media or 'unknown content type'}, {len(body)} bytes)"
    reason = response.reason_phrase or ""
    message = f"{status} {reason} for {method} {url}: {detail}".replace("  ", " ")
    cls = _class_for(status)
    kwargs: dict[str, Any] = {
        "status_code": status,
        "method": method,
        "url": url,
        "operation_outcome": outcome,
        "www_authenticate": challenge,
    }
    if cls is RateLimited:
        wait = parse_retry_after(response.headers.get("retry-after"))
        if wait is not None:
            shown = f"{wait:.0f}" if wait >= 1 else f"{wait:.1f}"
            message += f" (the server asked to retry after {shown} s)"
        return RateLimited(message, retry_after=wait, **kwargs)
    return cls(message, **kwargs)


def unexpected_content(response: httpx.Response) -> UnexpectedContentError:
    """The error for a body that is not FHIR JSON (Epic: XML without ``Accept``, IIS HTML for bad paths)."""
    request = response.request
    media = media_type(response.headers.get("content-type"))
    kind = "XML" if "xml" in media else "HTML" if "html" in media else media or "no content type"
    hint = ""
    if kind == "HTML" and response.status_code == 404:
        hint = ": an IIS 404 page, Epic's answer for an unknown resource type or unsupported path"
    elif kind == "XML":
        hint = ": Epic answers XML when the request lacks Accept: application/fhir+json"
    return UnexpectedContentError(
        f"expected FHIR JSON from {request.method} {redact_url(request.url)} but got {kind} "
        f"({media or 'unknown'}, {len(response.content)} bytes, status {response.status_code}){hint}",
        status_code=response.status_code,
        content_type=media,
        method=request.method,
        url=redact_url(request.url),
    )


# -- retries under every request ----------------------------------------------------------------------------


class _Gate:
    """One pause shared by every request of a transport: nobody sends before ``open_at`` (monotonic)."""

    __slots__ = ("open_at",)

    def __init__(self) -> None:
        self.open_at = 0.0


class RetryTransport(httpx.AsyncBaseTransport):
    """Wrap ``next_transport`` with :class:`RetryPolicy` retries and a shared 429 gate.

    ``sleep`` and ``clock`` are injectable for tests (defaults ``anyio.sleep`` and ``time.monotonic``).
    """

    def __init__(
        self,
        next_transport: httpx.AsyncBaseTransport,
        *,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.next_transport = next_transport
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self._gate = _Gate()
        #: Requests re-sent so far (every retry of every request); read by pull progress displays.
        self.retries = 0

    async def _wait_gate(self) -> float:
        pause = self._gate.open_at - self._clock()
        if pause > 0:
            await self._sleep(pause)
            return pause
        return 0.0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        policy = self.policy
        method_ok = is_retryable_method(request.method, request.extensions)
        read_body = request.extensions.get(READ_BODY)  # a byte limit, or True for none
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            if self._gate.open_at:
                waited += await self._wait_gate()
            try:
                response = await self.next_transport.handle_async_request(request)
                if read_body:
                    await read_limited(response, None if read_body is True else read_body, request=request)
            except httpx.TransportError as exc:
                if not isinstance(
                    exc,
                    (
                        httpx.ConnectError,
                        httpx.ReadError,
                        httpx.WriteError,
                        httpx.RemoteProtocolError,
                        httpx.TimeoutException,
                    ),
                ):
                    raise
                if not should_retry(policy, attempt=attempt, method_ok=method_ok, connection_error=True):
                    raise
                delay = retry_delay(policy, attempt=attempt, waited=waited, rand=self._rand)
                if delay is None:
                    raise
                log.debug(
                    "retrying %s %s after %s (attempt %d) in %.2fs",
                    request.method,
                    redact_url(request.url),
                    type(exc).__name__,
                    attempt,
                    delay,
                )
                await self._sleep(delay)
                waited += delay
                self.retries += 1
                continue
            status = response.status_code
            if status < 400 or not should_retry(
                policy, attempt=attempt, method_ok=method_ok, status_code=status
            ):
                return response
            delay = retry_delay(
                policy,
                attempt=attempt,
                retry_after=response.headers.get("retry-after"),
                waited=waited,
                rand=self._rand,
            )
            if delay is None:
                log.debug(
                    "not retrying %s %s: %d and the wait would exceed the policy's caps",
                    request.method,
                    redact_url(request.url),
                    status,
                )
                return response
            if status == 429:
                # A server's rate limit applies to the whole client, not one request: pause every request
                # (docs/epic-notes.md §1.8: Epic documents no limit, but customers may throttle).
                self._gate.open_at = max(self._gate.open_at, self._clock() + delay)
            log.debug(
                "retrying %s %s after %d (attempt %d) in %.2fs",
                request.method,
                redact_url(request.url),
                status,
                attempt,
                delay,
            )
            # The body is dropped unread (or was read under its limit above): a hostile server's error page
            # must not be read without a bound before a retry.
            await response.aclose()
            self.retries += 1
            if status == 429:
                waited += await self._wait_gate()
            else:
                await self._sleep(delay)
                waited += delay

    async def aclose(self) -> None:
        await self.next_transport.aclose()


# -- the session ----------------------------------------------------------------------------------------------


class HTTPSession:
    """The pooled ``httpx.AsyncClient`` of one :class:`~epic_fhir_async.EpicFHIRClient` and everything about
    sending on it: URL resolution and the origin rule, default headers, size limits, redirects, typed errors.

    ``http_client``: a caller-owned client, used as-is (no retry wrapping, never closed here); our default
    headers are then added per request. ``auth`` is an ``httpx.Auth`` flow, set by the client once bound.
    """

    def __init__(
        self,
        base_url: httpx.URL | str,
        *,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http2: bool = False,
        retry: RetryPolicy | None = None,
        max_response_bytes: int | None = MAX_RESPONSE_BYTES,
        max_ndjson_line_bytes: int = MAX_NDJSON_LINE_BYTES,
        pause_gc: bool = True,
        http_backend: Literal["httpx", "aiohttp"] = "httpx",
    ) -> None:
        base_url = httpx.URL(str(base_url).rstrip("/"))
        headers = headers if headers is not None else {"User-Agent": USER_AGENT}
        self.base_url = base_url
        self._base_prefix = str(base_url) + "/"
        self.max_response_bytes = max_response_bytes
        self.max_ndjson_line_bytes = max_ndjson_line_bytes
        self._loads = _json.loads_pausing_gc if pause_gc else _json.loads
        self._read_body: int | bool = max_response_bytes if max_response_bytes is not None else True
        self.auth: httpx.Auth | None = None
        self.owns_http = http_client is None
        self._retry_transport: RetryTransport | None = None
        if http_client is None:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=40)
            if transport is not None:
                inner = transport
            elif http_backend == "aiohttp":
                from ._aiohttp import aiohttp_transport  # the `fast` extra, loaded only when chosen

                inner = aiohttp_transport(limits=limits)
            else:
                inner = httpx.AsyncHTTPTransport(http2=http2, retries=0, limits=limits)
            # A RetryTransport given as the transport (to inject its clock or sleep) is used as it is.
            self._retry_transport = (
                inner if isinstance(inner, RetryTransport) else RetryTransport(inner, policy=retry)
            )
            http_client = httpx.AsyncClient(
                transport=self._retry_transport,
                timeout=httpx.Timeout(timeout, connect=min(timeout, DEFAULT_CONNECT_TIMEOUT)),
                follow_redirects=False,
                headers=dict(headers),
            )
            self._send_headers: dict[str, str] | None = None
        else:
            self._send_headers = dict(headers)  # the caller's client lacks our defaults: add them per request
        self.http = http_client

    @classmethod
    def of(cls, http: HTTPSession | httpx.AsyncClient, base_url: httpx.URL | str) -> HTTPSession:
        """``http`` itself, or a session around a caller's ``httpx.AsyncClient`` (used as-is, never closed)."""
        return http if isinstance(http, HTTPSession) else cls(base_url, http_client=http)

    @property
    def retries(self) -> int | None:
        """Requests re-sent by our retrying transport so far (``None`` with a caller-owned ``http_client``)."""
        transport = self._retry_transport
        return transport.retries if transport is not None else None

    def closed_message(self) -> str:
        if self.owns_http:
            return (
                "this EpicFHIRClient is closed (aclose() was called or its `async with` block ended): make the "
                "calls inside the block, or create a new client"
            )
        return (
            "the http_client given to this EpicFHIRClient is closed: keep it open while the client is in use"
        )

    def check_open(self) -> None:
        if self.http.is_closed:  # httpx would raise a bare RuntimeError
            raise ClientClosed(self.closed_message())

    async def aclose(self) -> None:
        """Close our HTTP client (a caller-owned one is left open)."""
        if self.owns_http:
            await self.http.aclose()

    # -- URLs -------------------------------------------------------------------------------------------

    def url(self, url: str | httpx.URL, *, allow_foreign_origin: bool = False) -> httpx.URL:
        """Resolve ``url`` against the base; an absolute URL elsewhere raises :class:`UnsafeURLError`."""
        text = str(url)
        try:
            if "://" not in text and not text.startswith("//"):
                if text.startswith("/"):  # absolute path: same origin as the base
                    return self.base_url.join(text)
                return httpx.URL(self._base_prefix + text)
            # "//host/path" (scheme-relative) names another host just like an absolute URL does.
            absolute = httpx.URL(text) if "://" in text else self.base_url.join(text)
        except httpx.InvalidURL:
            # Usually a next link or Content-Location from the server; the text may hold patient ids.
            raise EpicFHIRError(
                "invalid URL (from the server or the caller; not shown: it may hold ids)"
            ) from None
        if not allow_foreign_origin and not same_origin(absolute, self.base_url):
            raise UnsafeURLError(
                f"refusing {redact_url(absolute)}: not on the FHIR server's origin, it would receive the token"
            )
        return absolute

    def on_origin(self, url: httpx.URL) -> bool:
        """Whether ``url`` is on the FHIR base's origin (the only one that receives the bearer token)."""
        return same_origin(url, self.base_url)

    # -- requests outside the bearer flow (token, discovery, keys) ----------------------------------------

    async def send(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        limit: int,
        what: str,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request without the client's auth flow, the body read under ``limit`` bytes; the status
        is the caller's to judge. For requests to the OAuth server (token, discovery, keys), which may be on
        another origin and never carry the bearer token. ``what`` names the request in error messages."""
        self.check_open()
        with mapped_errors(method, url, what=what):
            request = self.http.build_request(
                method, url, headers=dict(headers or {}), data=data, extensions={READ_BODY: limit}
            )
            response = await self.http.send(request, auth=None, stream=True, follow_redirects=False)
            await read_limited(response, limit)
        return response

    # -- FHIR requests ------------------------------------------------------------------------------------

    async def _send(
        self, request: httpx.Request, *, stream: bool, allow_foreign_origin: bool, authenticate: bool = True
    ) -> httpx.Response:
        self.check_open()
        foreign = not same_origin(request.url, self.base_url)
        for _ in range(_MAX_REDIRECTS + 1):
            with mapped_errors(request.method, request.url):
                response = await self.http.send(
                    request,
                    auth=self.auth if authenticate and not foreign else None,
                    stream=True,
                    follow_redirects=False,
                )
            if response.status_code in _REDIRECTS and "location" in response.headers:
                await response.aclose()
                target = join_url(request.url, response.headers["location"])
                if not same_origin(target, self.base_url) and not allow_foreign_origin:
                    raise UnsafeURLError(
                        f"refusing a redirect from {redact_url(request.url)} to {redact_url(target)}: another "
                        "origin would receive the token"
                    )
                foreign = not same_origin(target, self.base_url)
                method = "GET" if response.status_code == 303 else request.method
                # The auth flow wrote the token into these headers; it adds it again only where it may go.
                headers = request.headers.copy()
                headers.pop("Authorization", None)
                request = self.http.build_request(
                    method, target, headers=headers, extensions=request.extensions
                )
                continue
            if response.status_code >= 400:
                await self._read(response)
                await response.aclose()
                media = media_type(response.headers.get("content-type"))
                if response.content and response.status_code < 429 and ("html" in media or "xml" in media):
                    # Epic's IIS answers unknown types/paths with an HTML 404 page (docs/epic-notes.md §3.7):
                    # not a FHIR error. A 429 or 5xx HTML page (a gateway's) stays RateLimited/ServerError.
                    raise unexpected_content(response)
                raise error_from_response(response)
            if not stream:
                await self._read(response)
            return response
        raise TransportError(f"too many redirects from {redact_url(request.url)}", method=request.method)

    async def _read(self, response: httpx.Response) -> None:
        # Our RetryTransport has read the body already (READ_BODY); a caller-owned client's connection can still
        # be cut mid-body here.
        request = response.request
        with mapped_errors(request.method, request.url):
            await read_limited(response, self.max_response_bytes)

    def _build(
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
        extensions: dict[str, Any] | None = None,
    ) -> httpx.Request:
        target = self.url(url, allow_foreign_origin=allow_foreign_origin)
        send_headers: dict[str, str] = {}
        if self._send_headers is not None:
            send_headers.update(self._send_headers)
        if headers:
            send_headers.update(headers)
        if json is not None:
            content = _json.dumps(json)
            send_headers.setdefault("Content-Type", FHIR_JSON)
        return self.http.build_request(
            method,
            target,
            params=params,
            headers=send_headers or None,
            content=content,
            data=data,
            extensions=extensions,
        )

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
        retry: bool = True,
    ) -> httpx.Response:
        """Send a request; the body is read under the size limit and the status checked (errors are typed).

        Relative URLs resolve against the base. ``allow_foreign_origin`` permits another origin (no token is
        sent there). ``retry_safe`` lets the retrying transport repeat a POST; ``retry=False`` sends it once
        (the caller runs its own retry loop).
        """
        extensions: dict[str, Any] = {READ_BODY: self._read_body}
        if retry_safe:
            extensions[RETRY_SAFE] = True
        if not retry:
            extensions[NO_RETRY] = True
        request = self._build(
            method,
            url,
            params=params,
            headers=headers,
            json=json,
            content=content,
            data=data,
            allow_foreign_origin=allow_foreign_origin,
            extensions=extensions,
        )
        return await self._send(request, stream=False, allow_foreign_origin=allow_foreign_origin)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        allow_foreign_origin: bool = False,
        authenticate: bool = True,
    ) -> AsyncIterator[httpx.Response]:
        """``async with session.stream("GET", url) as response``: status checked, the body left unread.

        ``authenticate=False`` sends no bearer token even on the FHIR origin (bulk files that do not require
        one). Errors while the caller reads the body are httpx's: map them with :func:`mapped_errors`.
        """
        request = self._build(
            method, url, params=params, headers=headers, allow_foreign_origin=allow_foreign_origin
        )
        response = await self._send(
            request, stream=True, allow_foreign_origin=allow_foreign_origin, authenticate=authenticate
        )
        try:
            yield response
        finally:
            await response.aclose()

    def decode(self, response: httpx.Response) -> Any:
        """The JSON body, after checking the Content-Type (Epic sends XML or IIS HTML in some cases)."""
        if media_type(response.headers.get("content-type")) not in JSON_CONTENT_TYPES:
            raise unexpected_content(response)
        try:
            return self._loads(response.content)
        except ValueError as exc:
            raise EpicFHIRError(
                f"invalid JSON from {response.request.method} {redact_url(response.request.url)}"
            ) from exc

    async def json(self, method: str, url: str | httpx.URL, **kwargs: Any) -> dict[str, Any]:
        """:meth:`request` then :meth:`decode`, requiring a JSON object (a FHIR resource)."""
        body = self.decode(await self.request(method, url, **kwargs))
        if not isinstance(body, dict):  # read/operation/capabilities promise a resource, not any JSON value
            raise EpicFHIRError(
                f"expected a FHIR resource (a JSON object) from {method}, got {type(body).__name__}"
            )
        return body
