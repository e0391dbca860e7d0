"""The HTTP session: every request the SDK makes goes through it.

FHIR interactions (:meth:`HTTPSession.request`: body read under the size limit, status checked, typed errors;
:meth:`HTTPSession.stream`: status checked, body left to the caller), and the requests that must not carry
the client's bearer flow (:meth:`HTTPSession.send`: token requests, SMART discovery, id_token keys). This is
the one module that turns httpx exceptions into :class:`TransportError` / :class:`RequestTimeout`, the one
that reads bodies under a limit (:func:`read_limited`, :func:`read_error_body`), the one that builds typed
errors from error responses (:func:`error_from_response`), and the one that keeps the SDK's own secrets out of
the messages it builds (:func:`scrub`), even when a server echoes them back.

Every attempt of every request has a deadline, the client's ``timeout``: connect, send, the response head and,
for bodies read whole, the body (:func:`attempt_deadline`). A streamed body must keep a minimum pace instead
(:class:`_Pace`), since a bulk file may rightly take longer than any fixed deadline.

Under the pooled ``httpx.AsyncClient`` sits :class:`RetryTransport` (retries with one 429 gate for the whole
client), built with the client's :class:`~epic_fhir_async.RetryPolicy`. The bearer token only ever travels to
the FHIR base's origin: a next link, redirect or URL elsewhere is refused (or, when allowed, sent without it).
"""

from __future__ import annotations

import base64
import binascii
import copy
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote_plus

import anyio
import httpx

from . import _json
from ._config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    FHIR_JSON,
    FORM_CONTENT_TYPE,
    JSON_CONTENT_TYPES,
    LOGGER_NAME,
    MAX_ERROR_BODY_BYTES,
    MAX_NDJSON_LINE_BYTES,
    MAX_PAGES,
    MAX_RESOURCE_BYTES,
    MAX_RESPONSE_BYTES,
    MIN_STREAM_BYTES_PER_SECOND,
    USER_AGENT,
)
from ._errors import (
    BadRequest,
    ClientClosed,
    ConfigurationError,
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
    DEADLINE,
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
    "DeadlineExceeded",
    "HTTPSession",
    "abandon",
    "RetryTransport",
    "attempt_deadline",
    "checked_stream",
    "error_from_response",
    "read_error_body",
    "read_limited",
    "request_secrets",
    "scrub",
    "scrub_chain",
    "transport_error",
]

log = logging.getLogger(f"{LOGGER_NAME}.retry")

_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


# -- the SDK's own secrets, out of every message it builds ------------------------------------------------------

#: Token-request form fields whose values are secrets (RFC 6749, RFC 7523, RFC 7636).
_SECRET_FIELDS = frozenset(
    {"client_secret", "client_assertion", "assertion", "refresh_token", "code", "code_verifier"}
)
_MASK = "<masked>"
#: Shorter values are not searched for: they would mask ordinary words of a message, and no credential the
#: SDK sends is that short.
_MIN_SECRET = 8
#: Links of an exception chain scrubbed (a chain can be made circular).
_CHAIN_LINKS = 8


def request_secrets(request: httpx.Request | None, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The secrets ``request`` carried (its ``Authorization`` credentials, the secret fields of a token
    request's form), with ``extra`` (the auth's current tokens): what a server could echo back."""
    found = [value for value in extra if value]
    if request is not None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        credentials = credentials.strip()
        if credentials:
            found.append(credentials)
            if scheme.lower() == "basic":
                found += _basic_secret(credentials)
        if media_type(request.headers.get("content-type")) == FORM_CONTENT_TYPE:
            try:
                form = request.content.decode("latin-1")
            except httpx.RequestNotRead:
                form = ""
            for name, value in parse_qsl(form):
                if name in _SECRET_FIELDS:
                    found.append(value)
                    if name.endswith("assertion"):  # a JWT: its signature alone is what makes it usable
                        found.append(value.rsplit(".", 1)[-1])
    # Longest first: a secret that contains another is masked whole.
    return tuple(sorted({s for s in found if len(s) >= _MIN_SECRET}, key=len, reverse=True))


def _basic_secret(credentials: str) -> list[str]:
    try:
        pair = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return []
    secret = pair.partition(":")[2]
    return [secret, unquote_plus(secret)] if secret else []


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``<masked>``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def scrub_chain(exc: BaseException, secrets: Iterable[str]) -> None:
    """Scrub the secrets out of ``exc`` and the exceptions it was raised from, in place: an httpx error can
    hold a header value (h11 quotes the offending header, token included) and ours chain it."""
    values = tuple(secrets)
    if not values:
        return
    current: BaseException | None = exc
    for _ in range(_CHAIN_LINKS):
        if current is None:
            break
        text = str(current)
        clean = scrub(text, values)
        if clean != text or any(secret in repr(current.args) for secret in values):
            current.args = (clean,)
        current = current.__cause__ or current.__context__


def _request_of(exc: BaseException) -> httpx.Request | None:
    try:
        return exc.request if isinstance(exc, httpx.HTTPError) else None
    except RuntimeError:  # httpx raises it when no request was attached
        return None


# -- the one mapping of httpx exceptions ------------------------------------------------------------------


class DeadlineExceeded(httpx.TimeoutException):
    """An attempt did not complete within its deadline (connect, send, response head and, when read whole, the
    body): a server trickling bytes defeats httpx's per-read timeouts, not this."""

    def __init__(self, seconds: float, *, request: httpx.Request, min_bytes: int | None = None) -> None:
        if min_bytes is None:
            message = f"no complete answer within {seconds:g} s"
        else:
            message = f"the body delivered fewer than {min_bytes} bytes in {seconds:g} s"
        super().__init__(message, request=request)
        self.seconds = seconds
        self.min_bytes = min_bytes


@contextmanager
def attempt_deadline(
    seconds: float | None, request: httpx.Request, *, started: float | None = None
) -> Iterator[None]:
    """Raise :class:`DeadlineExceeded` when the block ends later than ``seconds`` after ``started`` (an
    ``anyio.current_time()``; default now). ``None`` seconds: no deadline.

    The block is cancelled (httpcore closes the connection it was using in a shielded scope, and so do our
    body readers), so nothing of the attempt is left behind: no socket, no task.
    """
    if seconds is None:
        yield
        return
    start = anyio.current_time() if started is None else started
    with anyio.CancelScope(deadline=start + seconds) as scope:
        yield
    if scope.cancelled_caught:
        raise DeadlineExceeded(seconds, request=request)


def transport_error(exc: Exception, method: str, url: httpx.URL | str, *, what: str = "") -> EpicFHIRError:
    """The SDK's error for an httpx exception raised while sending ``method url``.

    ``what`` names the request in the message (``"token request to"``). The httpx exception goes on
    ``__cause__``; its text is never copied into ours, since it can hold header values (and is scrubbed of
    the request's secrets by :func:`mapped_errors` before it is chained).
    """
    shown = redact_url(url)
    name = type(exc).__name__
    if isinstance(exc, httpx.InvalidURL):  # httpx pre-builds the redirect of a malformed Location and fails
        return EpicFHIRError(f"{what or method} {shown}: the server sent an invalid URL (not shown)")
    if isinstance(exc, DeadlineExceeded) and exc.min_bytes is not None:
        return RequestTimeout(
            f"{what or method} {shown}: the body delivered fewer than {exc.min_bytes} bytes in {exc.seconds:g} s "
            "(a streamed body must keep a minimum pace)",
            method=method,
            url=shown,
        )
    if isinstance(exc, DeadlineExceeded):
        return RequestTimeout(
            f"{what or method} {shown} did not complete within {exc.seconds:g} s (connect, headers and body: "
            "the deadline of one attempt, EpicFHIRClient(timeout=...))",
            method=method,
            url=shown,
        )
    timeout = isinstance(exc, httpx.TimeoutException)
    if what:
        text = f"{what} {shown} timed out ({name})" if timeout else f"{what} {shown} failed: {name}"
    else:
        text = f"{name} during {method} {shown}"
    return (RequestTimeout if timeout else TransportError)(text, method=method, url=shown)


@contextmanager
def mapped_errors(
    method: str, url: httpx.URL | str, *, what: str = "", secrets: Iterable[str] = ()
) -> Iterator[None]:
    """Raise :func:`transport_error` for any httpx exception of the block, its chain first scrubbed of the
    secrets the failed request carried and of ``secrets``."""
    try:
        yield
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        scrub_chain(exc, request_secrets(_request_of(exc), secrets))
        raise transport_error(exc, method, url, what=what) from exc


# -- bodies under a size limit ------------------------------------------------------------------------------


#: Set in ``response.extensions`` when an error body was cut at :data:`MAX_ERROR_BODY_BYTES` (or not read).
TRUNCATED = "epic_fhir_async.truncated"


#: Request extension naming the client option behind the READ_BODY limit, for the message (None: a fixed one).
LIMIT_OPTION = "epic_fhir_async.limit_option"


def too_large(
    request: httpx.Request,
    limit: int,
    what: str = "response body",
    option: str | None = "max_response_bytes",
) -> ResponseTooLarge:
    advice = (
        f"raise the limit (EpicFHIRClient({option}=...)) only for a server you trust"
        if option
        else "no answer of this kind is that large"
    )
    return ResponseTooLarge(
        f"the {what} of {request.method} {redact_url(request.url)} is larger than {limit} bytes; {advice}",
        limit=limit,
    )


async def _close(response: httpx.Response) -> None:
    # Shielded: when a deadline or a cancellation is why we stop, the connection must still be released.
    with anyio.CancelScope(shield=True):
        await response.aclose()


class _Stop(Exception):
    """Raised inside a raw body stream to end the read (see :class:`_Checked`)."""


async def read_limited(
    response: httpx.Response,
    limit: int | None,
    *,
    request: httpx.Request | None = None,
    option: str | None = "max_response_bytes",
) -> None:
    """``await response.aread()``, but raise :class:`ResponseTooLarge` beyond ``limit`` bytes (None: no limit).

    ``request`` names the request in the error (a transport's response does not know it yet), ``option`` the
    client option that raises the limit. On any error, cancellation included, the response is closed (its
    connection goes back to the pool or is dropped).
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
            await _close(response)
            raise
        return
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        await _close(response)
        raise too_large(request or response.request, limit, option=option)
    target = request or response.request
    chunks: list[bytes] = []
    size = 0

    def check() -> None:
        if size > limit:
            raise too_large(target, limit, option=option)

    # The limit is on the *decoded* size (a gzip bomb), counted here; the stop is raised from inside the raw
    # stream (_Checked) so every one of httpx's nested body generators ends normally: stopping from out
    # here would leave them suspended for the GC, which trio reports as a ResourceWarning.
    checked_stream(response, check)  # None for an in-memory body, already bounded
    try:
        async with aclosing(cast("AsyncGenerator[bytes, None]", response.aiter_bytes())) as body:
            async for chunk in body:
                size += len(chunk)
                if size <= limit:
                    chunks.append(chunk)
        check()  # the body ended right after the chunk that broke the limit
    except BaseException:
        await _close(response)
        raise
    # What Response.aread() itself does once the body is in: later reads return it without a stream.
    response._content = b"".join(chunks)


async def read_error_body(response: httpx.Response, limit: int = MAX_ERROR_BODY_BYTES) -> None:
    """Read an error (or redirect) body up to ``limit`` bytes and drop the rest, closing the connection.

    Never raises for the size: what explains an error fits in a few KB, and the caller's typed error must
    keep its status (a 503 stays a ServerError). A cut body is marked ``response.extensions[TRUNCATED]``.
    A body whose declared ``Content-Length`` is over the limit is not read at all.
    """
    try:
        response.content  # noqa: B018 - already read: nothing to do
        return
    except httpx.ResponseNotRead:
        pass
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        await _close(response)
        response._content = b""
        response.extensions[TRUNCATED] = True
        return
    chunks: list[bytes] = []
    size = 0

    def check() -> None:
        if size > limit:
            raise _Stop

    checked_stream(response, check)
    truncated = False
    try:
        async with aclosing(cast("AsyncGenerator[bytes, None]", response.aiter_bytes())) as body:
            async for chunk in body:
                if size < limit:
                    chunks.append(chunk[: limit - size])
                size += len(chunk)
    except _Stop:
        truncated = True
    except BaseException:
        await _close(response)
        raise
    if truncated or size > limit:
        await _close(response)
        response.extensions[TRUNCATED] = True
    response._content = b"".join(chunks)


#: Raw bytes pulled at most while running a body out (httpcore buffers one 64 KiB read at most).
_RUN_OUT_BYTES = 256 * 1024


async def _run_out(raw: AsyncIterator[bytes]) -> None:
    # Pull on inside a cancelled scope: the first network read below raises the cancellation inside httpcore,
    # which closes the connection itself (shielded) and ends its generators on the way up, as do httpx's,
    # instead of leaving them suspended for the GC (trio warns then). What httpcore had buffered comes first;
    # a body complete in the buffer ends normally and its connection stays usable. A stream that never awaits
    # (an in-memory one) is not run out past _RUN_OUT_BYTES.
    with anyio.CancelScope() as scope:
        scope.cancel()
        pulled = 0
        try:
            async for chunk in raw:
                pulled += len(chunk)
                if pulled > _RUN_OUT_BYTES:
                    break
        except Exception:  # noqa: S110 - the body's failure is the point; ours is raised by the caller
            pass


async def abandon(response: httpx.Response, body: AsyncIterator[bytes]) -> None:
    """Stop reading ``body`` (an iterator over ``response``'s body, e.g. ``aiter_bytes()``) early, before
    raising: no generator of httpx or httpcore is left suspended (trio reports those as a
    ``ResourceWarning``) and httpcore releases the connection.

    The raw stream under httpx's decoder (a :class:`_Checked`) is told to stop: it runs out what is below it
    undecoded (:func:`_run_out`) and raises, which ends the decoder's generators as ``body`` is pulled once
    more (at most one piece of decoded data first)."""
    stream = response.stream
    if isinstance(stream, _Checked):
        stream.stopping = True
    else:
        await _run_out(body)
        return
    try:
        async for _ in body:
            pass
    except Exception:  # noqa: S110 - _Stop, or the body's own failure
        pass


class _Checked(httpx.AsyncByteStream):
    """The raw body, calling ``check`` before each chunk (each piece of ``piece`` bytes, for a compressed
    body) is handed on; ``check`` raises to stop the read. ``raw`` counts the bytes handed on so far.

    Raising in here, below httpx's decoders, ends every one of httpx's body generators above normally;
    httpcore's (and httpx's transport wrapper's) sit below this one, so they are run out first
    (:func:`abandon`). Stopping from the consumer's side would leave them all suspended for the GC, which
    trio reports as a ``ResourceWarning``.
    """

    def __init__(
        self, inner: httpx.AsyncByteStream, check: Callable[[], None], piece: int | None = None
    ) -> None:
        self._inner = inner
        self._check = check
        self._piece = piece
        self.raw = 0
        #: Set by :func:`abandon`: the next step runs the body out and raises.
        self.stopping = False

    def _next_step(self) -> None:
        if self.stopping:
            raise _Stop
        self._check()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = cast("AsyncGenerator[bytes, None]", self._inner.__aiter__())
        piece = self._piece
        async with aclosing(chunks):
            async for chunk in chunks:
                # A compressed body goes to httpx's decoder in pieces: one network read (64 KiB) of a gzip
                # bomb inflates to 64 MiB in one call, a piece to a few MiB at most before the next check.
                for start in range(0, len(chunk), piece or len(chunk) or 1):
                    try:
                        self._next_step()
                    except BaseException:
                        await _run_out(chunks)
                        raise
                    part = chunk[start : start + piece] if piece else chunk
                    self.raw += len(part)
                    yield part

    async def aclose(self) -> None:
        await self._inner.aclose()


#: Bytes of a compressed body handed to httpx's decoder at a time (DEFLATE inflates at most ~1032x).
_PIECE = 4096


def checked_stream(response: httpx.Response, check: Callable[[], None]) -> _Checked | None:
    """Put ``check`` under ``response``'s body (see :class:`_Checked`); ``None`` for an in-memory body."""
    if not isinstance(response.stream, httpx.AsyncByteStream):
        return None
    piece = _PIECE if response.headers.get("content-encoding") else None
    checked = _Checked(response.stream, check, piece)
    response.stream = checked
    return checked


class _Pace:
    """The check (for :class:`_Checked`) that a streamed body delivers ``min_bytes`` in every ``window``
    seconds, else :class:`DeadlineExceeded` (a TimeoutException: bulk files retry it, the session maps it to
    RequestTimeout).

    A bulk file may rightly take an hour, so a streamed body has no fixed deadline; what it may not do is
    trickle: httpx's read timeout restarts with every byte. The clock is read as each chunk arrives (a cancel
    scope per chunk measured ~2% of a bulk read); a body that stops altogether meets httpx's read timeout
    (``timeout`` too), so a trickle ends within two windows at most. The clock is ``time.monotonic`` (what
    asyncio's loop reads) rather than ``anyio.current_time()``, which looks up the running backend on every
    call: once per chunk, that lookup cost more than the check itself.
    """

    def __init__(self, window: float, min_bytes: int, request: httpx.Request) -> None:
        self._window = window
        self._min_bytes = min_bytes
        self._request = request
        self._start = time.monotonic()
        self._mark = 0
        self.stream: _Checked | None = None

    def __call__(self) -> None:
        raw = self.stream.raw if self.stream is not None else 0
        if raw - self._mark >= self._min_bytes:  # this window delivered: the next one starts now
            self._start = time.monotonic()
            self._mark = raw
        elif time.monotonic() - self._start > self._window:
            raise DeadlineExceeded(self._window, request=self._request, min_bytes=self._min_bytes)


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


def _scrubbed_body(body: bytes, secrets: Iterable[str]) -> bytes:
    for secret in secrets:
        raw = secret.encode("utf-8", "replace")
        if raw in body:
            body = body.replace(raw, _MASK.encode())
    return body


def error_from_response(response: httpx.Response, *, secrets: Iterable[str] = ()) -> FHIRStatusError:
    """Build the typed error for an error ``response`` whose body has been read.

    ``secrets`` (what the request carried: :meth:`HTTPSession.secrets_of`) are masked in everything the error
    holds that came from the server (the reason phrase, the OperationOutcome, the challenge), in case the
    server echoes them. An error body cut at MAX_ERROR_BODY_BYTES is not parsed.
    """
    secrets = tuple(secrets)
    request = response.request
    method = request.method
    url = redact_url(request.url)
    status = response.status_code
    # Scrubbed before media_type() lower-cases it: a lower-cased token would no longer match.
    content_type = scrub(response.headers.get("content-type", ""), secrets)
    media = media_type(content_type)
    challenge = {
        key: scrub(value, secrets)
        for key, value in parse_www_authenticate(response.headers.get("www-authenticate")).items()
    }
    outcome: OperationOutcome | None = None
    body = response.content
    truncated = bool(response.extensions.get(TRUNCATED))
    if body and media in JSON_CONTENT_TYPES and not truncated:
        try:
            outcome = OperationOutcome.from_json(_json.loads(_scrubbed_body(body, secrets)))
        except ValueError:
            outcome = None
    if outcome is not None and outcome.issues:
        detail = outcome_summary(outcome)
    elif status in (401, 403):
        # Whatever the body ("" at Epic, empty, an HTML page): the challenge is what explains a 401/403.
        detail = _explain_challenge(status, challenge)
    elif truncated:
        detail = (
            f"an error body over {MAX_ERROR_BODY_BYTES} bytes ({media or 'unknown content type'}, not parsed)"
        )
    elif not body.strip():
        detail = _explain_challenge(status, challenge)
    else:
        detail = f"non-FHIR body ({media or 'unknown content type'}, {len(body)} bytes)"
    reason = response.reason_phrase or ""
    message = scrub(f"{status} {reason} for {method} {url}: {detail}".replace("  ", " "), secrets)
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


def unexpected_content(response: httpx.Response, *, secrets: Iterable[str] = ()) -> UnexpectedContentError:
    """The error for a body that is not FHIR JSON (Epic: XML without ``Accept``, IIS HTML for bad paths)."""
    request = response.request
    media = media_type(
        scrub(response.headers.get("content-type", ""), secrets)
    )  # scrubbed before lower-casing
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

    async def _wait_gate(self, budget: float) -> float:
        # Within the request's budget of waits (max_total_wait), so retries keep their stated bound; past it
        # the request goes out anyway, and a new 429 ends it as RateLimited.
        pause = min(self._gate.open_at - self._clock(), budget)
        if pause > 0:
            await self._sleep(pause)
            return pause
        return 0.0

    async def _attempt(self, request: httpx.Request, read_body: int | bool | None) -> httpx.Response:
        response = await self.next_transport.handle_async_request(request)
        if response.status_code >= 300:
            # An error page or a redirect, streamed request or not: a few KB explain it, the rest is never read
            # (nor parsed), here inside the attempt's deadline, before any retry.
            await read_error_body(response)
        elif read_body:
            limit = None if read_body is True else read_body
            option = request.extensions.get(LIMIT_OPTION, "max_response_bytes")
            await read_limited(response, limit, request=request, option=option)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        policy = self.policy
        method_ok = is_retryable_method(request.method, request.extensions)
        read_body = request.extensions.get(READ_BODY)  # a byte limit, or True for none
        deadline = request.extensions.get(DEADLINE)
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            if self._gate.open_at:
                waited += await self._wait_gate(policy.max_total_wait - waited)
            try:
                # One deadline per attempt: connect, send, the response head (1xx lines included) and, when
                # read here, the body. Retries add at most max_total_wait of waiting (RetryPolicy).
                with attempt_deadline(deadline, request):
                    response = await self._attempt(request, read_body)
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
            # The body was read above, up to MAX_ERROR_BODY_BYTES: a hostile server's error page is never read
            # without a bound before a retry.
            await response.aclose()
            self.retries += 1
            if status == 429:
                waited += await self._wait_gate(policy.max_total_wait - waited)
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
        max_resource_bytes: int | None = MAX_RESOURCE_BYTES,
        max_ndjson_line_bytes: int = MAX_NDJSON_LINE_BYTES,
        max_pages: int | None = MAX_PAGES,
        pause_gc: bool = True,
        http_backend: Literal["httpx", "aiohttp"] = "httpx",
    ) -> None:
        base_url = httpx.URL(str(base_url).rstrip("/"))
        headers = headers if headers is not None else {"User-Agent": USER_AGENT}
        self.base_url = base_url
        self._base_prefix = str(base_url) + "/"
        self.timeout = _check_timeout(timeout)
        self.max_response_bytes = _check_limit("max_response_bytes", max_response_bytes)
        self.max_resource_bytes = _check_limit("max_resource_bytes", max_resource_bytes)
        self.max_ndjson_line_bytes = max_ndjson_line_bytes
        self.max_pages = _check_limit("max_pages", max_pages)
        self.pause_gc = pause_gc
        self._loads = _json.loads_pausing_gc if pause_gc else _json.loads
        self._read_body: int | bool = max_response_bytes if max_response_bytes is not None else True
        self._read_resource: int | bool = max_resource_bytes if max_resource_bytes is not None else True
        #: A streamed body must deliver this much in every ``timeout`` seconds (see _Pace).
        self._pace = math.ceil(MIN_STREAM_BYTES_PER_SECOND * self.timeout)
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
        # Our RetryTransport gives each attempt its deadline (the DEADLINE extension); a caller's client has
        # no such transport, so the session bounds each request itself (its auth flow included).
        self._session_deadline = None if self._retry_transport is not None else self.timeout
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

    #: Set on a :meth:`with_auth` view: closing it closes nothing, and its closed message names the client.
    is_view = False

    def with_auth(self, auth: httpx.Auth | None) -> HTTPSession:
        """A view of this session that sends with ``auth``: the same pooled client, retrying transport (one
        429 gate), limits, deadlines and headers; only the auth flow differs. Closing the view closes nothing."""
        view = copy.copy(self)
        view.auth = auth
        view.owns_http = False
        view.is_view = True
        return view

    def closed_message(self) -> str:
        if self.is_view:
            return (
                "the EpicFHIRClient this view was made from (client.with_auth) is closed: keep the app's client "
                "open while its views are in use"
            )
        if self.owns_http:
            return (
                "this EpicFHIRClient is closed (aclose() was called or its `async with` block ended): make the "
                "calls inside the block, or create a new client"
            )
        return (
            "the http_client given to this EpicFHIRClient is closed: keep it open while the client is in use"
        )

    def _auth_secrets(self) -> Iterable[str]:
        """The auth's current secrets (its tokens), for scrubbing; read only when an error is being built."""
        secrets = getattr(self.auth, "secrets", None)
        return tuple(secrets()) if callable(secrets) else ()

    def secrets_of(self, request: httpx.Request) -> tuple[str, ...]:
        """What must never appear in a message about ``request``: the credentials it carried, the auth's."""
        return request_secrets(request, self._auth_secrets())

    def scrub_exception(self, exc: BaseException) -> None:
        """Scrub the secrets of the request behind ``exc`` (an httpx error met while reading a streamed body)
        and the auth's out of it and its chain, before an SDK error chains it."""
        scrub_chain(exc, request_secrets(_request_of(exc), self._auth_secrets()))

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
        extensions = {READ_BODY: limit, LIMIT_OPTION: None, DEADLINE: self.timeout}
        with mapped_errors(method, url, what=what, secrets=self._auth_secrets()):
            request = self.http.build_request(
                method, url, headers=dict(headers or {}), data=data, extensions=extensions
            )
            with attempt_deadline(self._session_deadline, request):
                response = await self.http.send(request, auth=None, stream=True, follow_redirects=False)
                await self._read_for(response, stream=False)
        return response

    # -- FHIR requests ------------------------------------------------------------------------------------

    async def _send(
        self, request: httpx.Request, *, stream: bool, allow_foreign_origin: bool, authenticate: bool = True
    ) -> httpx.Response:
        self.check_open()
        foreign = not same_origin(request.url, self.base_url)
        for _ in range(_MAX_REDIRECTS + 1):
            with (
                mapped_errors(request.method, request.url, secrets=self._auth_secrets()),
                attempt_deadline(self._session_deadline, request),
            ):
                response = await self.http.send(
                    request,
                    auth=self.auth if authenticate and not foreign else None,
                    stream=True,
                    follow_redirects=False,
                )
                await self._read_for(response, stream=stream)
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
                await response.aclose()
                media = media_type(response.headers.get("content-type"))
                secrets = self.secrets_of(response.request)
                if response.content and response.status_code < 429 and ("html" in media or "xml" in media):
                    # Epic's IIS answers unknown types/paths with an HTML 404 page (docs/epic-notes.md §3.7):
                    # not a FHIR error. A 429 or 5xx HTML page (a gateway's) stays RateLimited/ServerError.
                    raise unexpected_content(response, secrets=secrets)
                raise error_from_response(response, secrets=secrets)
            return response
        raise TransportError(f"too many redirects from {redact_url(request.url)}", method=request.method)

    async def _read_for(self, response: httpx.Response, *, stream: bool) -> None:
        """Read what the SDK reads of ``response``, bounded: an error or redirect body up to
        MAX_ERROR_BODY_BYTES, a body read whole up to its READ_BODY limit; a streamed body is paced.

        Our RetryTransport has read the first two already, inside the attempt's deadline; with a caller's
        client this runs inside the session's deadline (and a connection can still be cut mid-body here).
        """
        request = response.request
        if response.status_code >= 300:
            await read_error_body(response)
        elif not stream:
            limit = request.extensions.get(READ_BODY, True)
            option = request.extensions.get(LIMIT_OPTION, "max_response_bytes")
            await read_limited(response, None if limit is True else limit, option=option)
        elif isinstance(response.stream, httpx.AsyncByteStream):
            pace = _Pace(self.timeout, self._pace, request)
            pace.stream = checked_stream(response, pace)

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
        resource: bool = False,
    ) -> httpx.Response:
        """Send a request; the body is read under the size limit and the status checked (errors are typed).

        Relative URLs resolve against the base. ``allow_foreign_origin`` permits another origin (no token is
        sent there). ``retry_safe`` lets the retrying transport repeat a POST; ``retry=False`` sends it once
        (the caller runs its own retry loop). ``resource=True``: the body is one resource, not a page of
        them, and is read under ``max_resource_bytes`` (parsing JSON costs a multiple of its size).
        """
        extensions: dict[str, Any] = {DEADLINE: self.timeout}
        if resource:
            extensions[READ_BODY] = self._read_resource
            extensions[LIMIT_OPTION] = "max_resource_bytes"
        else:
            extensions[READ_BODY] = self._read_body
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
        one). The deadline covers the response head; the body must then keep a pace of
        ``MIN_STREAM_BYTES_PER_SECOND`` over each ``timeout`` window (a slower one raises httpx's
        ``TimeoutException``, :class:`DeadlineExceeded`). Errors while the caller reads the body are httpx's:
        map them with :func:`mapped_errors`.
        """
        request = self._build(
            method,
            url,
            params=params,
            headers=headers,
            allow_foreign_origin=allow_foreign_origin,
            extensions={DEADLINE: self.timeout},
        )
        response = await self._send(
            request, stream=True, allow_foreign_origin=allow_foreign_origin, authenticate=authenticate
        )
        try:
            yield response
        finally:
            await _close(response)

    def check_json(self, response: httpx.Response) -> None:
        """Raise :class:`UnexpectedContentError` unless ``response`` says it is JSON (Epic sends XML or IIS
        HTML in some cases)."""
        if media_type(response.headers.get("content-type")) not in JSON_CONTENT_TYPES:
            raise unexpected_content(response, secrets=self.secrets_of(response.request))

    def decode(self, response: httpx.Response) -> Any:
        """The JSON body, after checking the Content-Type (:meth:`check_json`)."""
        self.check_json(response)
        return self.parse_json(response)

    def parse_json(self, response: httpx.Response) -> Any:
        """The JSON body of a response :meth:`check_json` has passed; invalid JSON is an EpicFHIRError."""
        try:
            return self._loads(response.content)
        except ValueError as exc:
            raise EpicFHIRError(
                f"invalid JSON from {response.request.method} {redact_url(response.request.url)}"
            ) from exc

    async def json(self, method: str, url: str | httpx.URL, **kwargs: Any) -> dict[str, Any]:
        """:meth:`request` then :meth:`decode`, requiring a JSON object (a FHIR resource, read under
        ``max_resource_bytes``)."""
        body = self.decode(await self.request(method, url, resource=True, **kwargs))
        if not isinstance(body, dict):  # read/operation/capabilities promise a resource, not any JSON value
            raise EpicFHIRError(
                f"expected a FHIR resource (a JSON object) from {method}, got {type(body).__name__}"
            )
        return body


def _check_timeout(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"timeout={value!r}: the deadline of one attempt of a request in seconds, a number > 0"
        )
    return float(value)


def _check_limit(name: str, value: int | None) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigurationError(f"{name}={value!r}: an int >= 1, or None for no limit")
