"""The exception tree. Every error the SDK raises is an :class:`EpicFHIRError`::

    EpicFHIRError
    ├── TransportError              connection failures; RequestTimeout for timeouts
    │   └── RequestTimeout
    ├── AuthError
    │   ├── TokenRequestError       the token endpoint said no: error, error_description, hint
    │   │   └── CodeExchangeError   a SMART launch's authorization code was refused
    │   ├── ConfigurationError      bad key, missing client id, no token endpoint, bad argument
    │   └── LaunchError             a SMART App Launch could not start or complete
    │       ├── LaunchStateError    the callback's state is missing, wrong or too old (forged/replayed)
    │       ├── UntrustedIssuer     the EHR's ``iss`` is not the configured FHIR base
    │       ├── AuthorizationDenied ``error=`` on the redirect (access_denied, ...)
    │       ├── IdTokenError        the id_token failed verification
    │       └── ReauthorizationRequired  the token expired and cannot be refreshed: launch again
    ├── FHIRStatusError             status_code, operation_outcome, method, url (never the query)
    │   ├── BadRequest 400          ├── Unauthorized 401      ├── Forbidden 403
    │   ├── NotFound 404/410        ├── MethodNotAllowed 405  ├── Conflict 409/412
    │   ├── UnprocessableEntity 422 ├── RateLimited 429       └── ServerError 5xx
    ├── UnexpectedContentError      XML or HTML where FHIR JSON was expected (Epic does this)
    ├── PagingError                 a next link that repeats, an expired paging session twice
    │   └── SessionExpired          Epic's 4113 "Session ID for cached search results has expired."
    ├── UnsafeURLError              a URL on another origin would have received the bearer token
    ├── ClientClosed                the client was used after aclose() / its ``async with`` (also a RuntimeError)
    ├── ResponseTooLarge            a body or NDJSON line beyond the configured size limit
    ├── PullError                   a (patient, query) stream of a pull failed
    └── BulkExportError             anything about $export
        └── BulkExportTooSoon       "The Client requested this Group too recently."

``str(error)`` names the status, the method, the URL (ids masked, no query string: :func:`redact_url`) and
each OperationOutcome issue's severity, code and Epic code text. It never contains a header value, a token, a
query string or an issue's ``diagnostics`` (Epic fills them with patient data at times): those stay on
``error.operation_outcome`` / ``error.issues``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from . import _json
from ._config import JSON_CONTENT_TYPES
from ._outcome import OperationOutcome, OutcomeIssue
from ._redact import redact_url

__all__ = [
    "AuthError",
    "AuthorizationDenied",
    "BadRequest",
    "BulkExportError",
    "BulkExportTooSoon",
    "ClientClosed",
    "CodeExchangeError",
    "ConfigurationError",
    "Conflict",
    "EpicFHIRError",
    "FHIRStatusError",
    "Forbidden",
    "IdTokenError",
    "LaunchError",
    "LaunchStateError",
    "MethodNotAllowed",
    "NotFound",
    "PagingError",
    "PullError",
    "RateLimited",
    "ReauthorizationRequired",
    "RequestTimeout",
    "ResponseTooLarge",
    "ServerError",
    "SessionExpired",
    "TokenRequestError",
    "TransportError",
    "Unauthorized",
    "UnexpectedContentError",
    "UnprocessableEntity",
    "UnsafeURLError",
    "UntrustedIssuer",
    "error_from_response",
    "join_url",
    "outcome_summary",
    "parse_www_authenticate",
    "redact_url",
]


class EpicFHIRError(Exception):
    """Base of every error raised by epic_fhir_async."""


def join_url(base: httpx.URL | str, reference: str) -> httpx.URL:
    """``reference`` (a Location, Content-Location, next link or file URL from the server) resolved against
    ``base``; a malformed one raises :class:`EpicFHIRError` instead of httpx's ``InvalidURL``.

    The text is not shown: server URLs carry patient identifiers. Origin checks are the caller's job.
    """
    try:
        return httpx.URL(base).join(reference)
    except httpx.InvalidURL:
        raise EpicFHIRError("the server sent an invalid URL (not shown: it may hold identifiers)") from None


class TransportError(EpicFHIRError):
    """The request never got an HTTP answer (connection refused or reset, DNS, TLS, protocol error)."""

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class RequestTimeout(TransportError):
    """The request timed out (connect, read, write or pool)."""


class AuthError(EpicFHIRError):
    """Authentication or authorisation could not be set up."""


class ConfigurationError(AuthError):
    """The SDK was configured wrongly (bad key, missing client id, bad argument): the message says what to fix."""


class TokenRequestError(AuthError):
    """The token endpoint refused to issue a token.

    ``error`` and ``error_description`` come from the OAuth error response (Epic sends
    ``error_description: null``); ``hint`` says what usually causes that error at Epic.
    """

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        error_description: str | None = None,
        hint: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.error_description = error_description
        self.hint = hint
        self.status_code = status_code

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\nHint: {self.hint}" if self.hint else text


class CodeExchangeError(TokenRequestError):
    """The token endpoint refused a SMART launch's authorization code (``error`` says why, ``hint`` what to do).

    Codes are single-use and short-lived; a wrong ``redirect_uri`` or PKCE verifier also lands here.
    """


class LaunchError(AuthError):
    """A SMART App Launch could not start or complete; the message says what the app should do."""


class LaunchStateError(LaunchError):
    """The callback's ``state`` is missing or not the one this launch sent, or the launch is too old.

    Treat it as a forged or replayed callback (CSRF): do not retry with the same request, start a new launch.
    """


class UntrustedIssuer(LaunchError):
    """The ``iss`` an EHR launch named is not the FHIR base this app is configured for (Epic §2.1:
    allow-list ``iss``: a phishing page can send any URL)."""


class AuthorizationDenied(LaunchError):
    """The authorization server redirected back with ``error=`` (``access_denied`` when the user said no).

    ``error``, ``error_description`` and ``error_uri`` are as the server sent them.
    """

    def __init__(
        self,
        message: str,
        *,
        error: str,
        error_description: str | None = None,
        error_uri: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.error_description = error_description
        self.error_uri = error_uri


class IdTokenError(LaunchError):
    """The ``id_token`` failed verification; ``reason`` is a short code (``bad_signature``, ``wrong_issuer``,
    ``wrong_audience``, ``expired``, ``wrong_nonce``, ``bad_algorithm``, ...)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ReauthorizationRequired(LaunchError):
    """The launch's access token expired and cannot be refreshed (no refresh token, or the refresh token was
    refused): send the user through the launch again."""


class FHIRStatusError(EpicFHIRError):
    """The FHIR server answered with an error status.

    ``operation_outcome`` holds every issue of the OperationOutcome body (or ``None`` when the body was empty,
    as Epic's 401/403 often are); ``www_authenticate`` the parsed ``WWW-Authenticate`` parameters.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        method: str,
        url: str,
        operation_outcome: OperationOutcome | None = None,
        www_authenticate: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.method = method
        self.url = url
        self.operation_outcome = operation_outcome
        self.www_authenticate: Mapping[str, str] = dict(www_authenticate or {})

    @property
    def issues(self) -> tuple[OutcomeIssue, ...]:
        """Every OperationOutcome issue, ``diagnostics`` included (kept out of ``str()``: may be patient data)."""
        return self.operation_outcome.issues if self.operation_outcome is not None else ()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code}, method={self.method!r}, url={self.url!r})"
        )


class BadRequest(FHIRStatusError):
    """400: Epic's search-rule failures (missing category, demographics, ...) land here."""


class Unauthorized(FHIRStatusError):
    """401: the token is missing, expired or invalid (``invalid_token``)."""


class Forbidden(FHIRStatusError):
    """403: the app lacks the Incoming API (``insufficient_scope``) or the user lacks security."""


class NotFound(FHIRStatusError):
    """404 or 410: unknown FHIR id (Epic code 59008), unknown path, or an expired bulk file."""


class MethodNotAllowed(FHIRStatusError):
    """405: the interaction is not supported for this type (Epic writes only to some types)."""


class Conflict(FHIRStatusError):
    """409 or 412."""


class UnprocessableEntity(FHIRStatusError):
    """422: the resource failed validation."""


class RateLimited(FHIRStatusError):
    """429 after retries ran out, or a ``Retry-After`` longer than the policy accepts.

    ``retry_after`` is the server's requested wait in seconds when it sent one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(FHIRStatusError):
    """5xx after retries ran out."""


class UnexpectedContentError(EpicFHIRError):
    """The server sent something other than FHIR JSON (Epic: XML without ``Accept``, IIS HTML for bad paths)."""

    def __init__(self, message: str, *, status_code: int, content_type: str, method: str, url: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.content_type = content_type
        self.method = method
        self.url = url


class PagingError(EpicFHIRError):
    """Paging through a search went wrong (a next link that repeats, a session that expired twice)."""


class SessionExpired(PagingError):
    """Epic's paging session expired (OperationOutcome code 4113)."""


class UnsafeURLError(EpicFHIRError):
    """A URL points outside the FHIR server's origin, so it must not receive the bearer token."""


class ClientClosed(EpicFHIRError, RuntimeError):
    """The client was used after ``aclose()`` (or after its ``async with`` block ended): create a new one, or
    keep the calls inside the block. Also a ``RuntimeError``, which httpx raised here before."""


class ResponseTooLarge(EpicFHIRError):
    """A response body (or one NDJSON line) is larger than the configured limit; ``limit`` is in bytes.

    The limits keep a hostile or broken server from exhausting memory (SECURITY.md); raise them with
    ``EpicFHIRClient(max_response_bytes=..., max_ndjson_line_bytes=...)`` for a server you trust.
    """

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class PullError(EpicFHIRError):
    """A stream of a concurrent pull failed; ``patient_id`` and ``query`` say which, ``__cause__`` why."""

    def __init__(self, message: str, *, patient_id: str | None, query: str) -> None:
        super().__init__(message)
        self.patient_id = patient_id
        self.query = query


class BulkExportError(EpicFHIRError):
    """A Bulk Data ``$export`` step failed.

    ``operation_outcome`` and ``status_code`` are set when a server answer caused it (``__cause__`` holds the
    underlying :class:`FHIRStatusError`).
    """

    def __init__(
        self,
        message: str,
        *,
        operation_outcome: OperationOutcome | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.operation_outcome = operation_outcome
        self.status_code = status_code


class BulkExportTooSoon(BulkExportError):
    """Epic refused the kick-off: the client exported this Group too recently, or one is still running.

    Not retryable now; ``retry_after`` (seconds) is set when the server said when to come back.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        operation_outcome: OperationOutcome | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, operation_outcome=operation_outcome, status_code=status_code)
        self.retry_after = retry_after


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

# A match starts only at the beginning of a token (the lookbehind): otherwise a long run of token characters
# without "=" backtracks quadratically, and a hostile server's 64 KB header took over a minute to parse.
_AUTH_PARAM = re.compile(r'(?<![A-Za-z0-9_\-])([A-Za-z0-9_\-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_www_authenticate(value: str | None) -> dict[str, str]:
    """Parse a ``Bearer`` challenge's auth-params (``error``, ``error_description``, ``scope``, ...).

    Lenient: unknown schemes, stray commas and missing quotes are tolerated; a bad header gives ``{}``.
    """
    if not value:
        return {}
    text = value.strip()
    scheme, _, rest = text.partition(" ")
    if "=" in scheme:  # no scheme at all, only params
        rest = text
    params: dict[str, str] = {}
    for match in _AUTH_PARAM.finditer(rest):
        key = match.group(1).lower()
        quoted = match.group(2)
        params[key] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match.group(3)
    return params


def _class_for(status: int) -> type[FHIRStatusError]:
    if status in _STATUS_CLASSES:
        return _STATUS_CLASSES[status]
    if status >= 500:
        return ServerError
    return FHIRStatusError


def _explain_empty(status: int, challenge: Mapping[str, str]) -> str:
    # Epic answers 401/403 with an empty body; the only clue is WWW-Authenticate (epic-behaviour.md §3.7).
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


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), ``None`` when absent or unparsable."""
    from ._retry_after import parse_retry_after  # leaf module; local import keeps this one leaf-only

    return parse_retry_after(response.headers.get("retry-after"))


def _issue_summary(issue: OutcomeIssue) -> str:
    # Severity, code and Epic's code text (a fixed table, §3.8) only: diagnostics and free text can name a
    # patient, so they stay on the error object.
    epic = issue.epic_code
    text = f"{issue.severity or '?'}/{issue.code or '?'}"
    if epic:
        text += f" [{epic}]"
        if issue.details_text:
            text += f" {issue.details_text}"
    return text


def outcome_summary(outcome: OperationOutcome) -> str:
    """A one-line summary of ``outcome`` safe for messages and logs (no ``diagnostics``)."""
    text = "; ".join(_issue_summary(issue) for issue in outcome.issues) or "OperationOutcome without issues"
    if any(issue.diagnostics for issue in outcome.issues):
        text += " (diagnostics withheld: see .issues)"
    return text


def error_from_response(response: httpx.Response) -> FHIRStatusError:
    """Build the typed error for an error ``response`` whose body has been read."""
    request = response.request
    method = request.method
    url = redact_url(request.url)
    status = response.status_code
    content_type = response.headers.get("content-type", "")
    challenge = parse_www_authenticate(response.headers.get("www-authenticate"))
    outcome: OperationOutcome | None = None
    body = response.content
    if body and content_type.split(";")[0].strip().lower() in JSON_CONTENT_TYPES:
        try:
            outcome = OperationOutcome.from_json(_json.loads(body))
        except ValueError:
            outcome = None
    if outcome is not None and outcome.issues:
        detail = outcome_summary(outcome)
    elif not body.strip():
        detail = _explain_empty(status, challenge)
    else:
        kind = content_type.split(";")[0].strip() or "unknown content type"
        detail = f"non-FHIR body ({kind}, {len(body)} bytes)"
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
        wait = retry_after_seconds(response)
        if wait is not None:
            shown = f"{wait:.0f}" if wait >= 1 else f"{wait:.1f}"
            message += f" (the server asked to retry after {shown} s)"
        return RateLimited(message, retry_after=wait, **kwargs)
    return cls(message, **kwargs)
