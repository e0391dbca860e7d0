"""The exception tree. Every error the SDK raises is an :class:`EpicFHIRError`::

    EpicFHIRError
    ├── TransportError              connection failures; RequestTimeout for timeouts
    │   └── RequestTimeout
    ├── ConfigurationError          any bad argument or setting (also a ValueError): raised before any request
    ├── AuthError
    │   ├── TokenRequestError       the token endpoint said no: error, error_description, hint
    │   │   └── CodeExchangeError   a SMART launch's authorization code was refused
    │   └── LaunchError             a SMART App Launch could not start or complete
    │       ├── LaunchStateError    the callback's state is missing, wrong or too old (forged/replayed)
    │       ├── UntrustedIssuer     the EHR's ``iss`` is not the configured FHIR base
    │       ├── AuthorizationDenied ``error=`` on the redirect (access_denied, ...)
    │       ├── IdTokenError        the id_token failed verification
    │       └── ReauthorizationRequired  the token expired and cannot be refreshed: launch again
    │           └── TokenSetUnreadable   a stored token set does not decrypt with the app's key(s)
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
    ├── ModelValidationError        a resource the typed models (fhir.resources) reject (also a ValueError)
    ├── StoreUnavailable            a shared store (Redis: a web app's sessions, the fleet's) did not answer
    └── BulkExportError             anything about $export
        └── BulkExportTooSoon       "The Client requested this Group too recently."

``str(error)`` names the status, the method, the URL (ids masked, no query string) and
each OperationOutcome issue's severity, code and Epic code text. It never contains a header value, a token, a
query string or an issue's ``diagnostics`` (Epic fills them with patient data at times): those stay on
``error.operation_outcome`` / ``error.issues``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._outcome import OperationOutcome, OutcomeIssue

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
    "ModelValidationError",
    "NotFound",
    "PagingError",
    "PullError",
    "RateLimited",
    "ReauthorizationRequired",
    "RequestTimeout",
    "ResponseTooLarge",
    "ServerError",
    "SessionExpired",
    "StoreUnavailable",
    "TokenRequestError",
    "TokenSetUnreadable",
    "TransportError",
    "Unauthorized",
    "UnexpectedContentError",
    "UnprocessableEntity",
    "UnsafeURLError",
    "UntrustedIssuer",
]


class EpicFHIRError(Exception):
    """Base of every error raised by epic_fhir_async."""


class TransportError(EpicFHIRError):
    """The request never got an HTTP answer (connection refused or reset, DNS, TLS, protocol error)."""

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class RequestTimeout(TransportError):
    """The request timed out (connect, read, write or pool)."""


class ConfigurationError(EpicFHIRError, ValueError):
    """A bad argument or setting (a misspelled type, an id that is not a FHIR id, a bad key, a missing client
    id, an option out of range): the message says what to fix. Raised before any request is sent.

    Also a ``ValueError``, the exception Python code raises for a bad argument; not an :class:`AuthError`, so
    ``except AuthError`` does not catch a misspelled resource type.
    """


class AuthError(EpicFHIRError):
    """Authentication or authorisation could not be set up."""


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
    """The ``iss`` an EHR launch named is not the FHIR base this app is configured for (Epic,
    docs/epic-notes.md §2.1: allow-list ``iss``: a phishing page can send any URL)."""


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


class TokenSetUnreadable(ReauthorizationRequired):
    """A stored token set (or a pending launch) does not decrypt with the app's key(s): a wrong key, a key
    rotated out of the list too early, or tampered data. The user signs in again; if every session fails
    this way, check the key the app was started with. Nothing of the stored value is in the message."""


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


class StoreUnavailable(EpicFHIRError):
    """The store that keeps a web app's sessions (Redis) did not answer within its deadline, or could not
    take a session's refresh lock in time. Transient: the session is kept; ask the user to try again (or to
    sign in again once the store is back). The message names the store without its password.

    The fleet's Redis errors are one too (``epic_fhir_async.fleet.RedisUnavailable``), so one ``except``
    covers every Redis the SDK keeps state in."""


class ModelValidationError(EpicFHIRError, ValueError):
    """A resource that the typed models of :mod:`epic_fhir_async.models` (fhir.resources, FHIR R4B) reject.

    ``problems`` lists ``(location, kind)`` pairs such as ``("effectiveDateTime", "value_error")``;
    ``resource`` is the dict as the server sent it. Neither the message nor ``problems`` holds a value from
    the resource (values can be patient data), and the validator's own error is not chained for that reason.
    """

    def __init__(
        self,
        message: str,
        *,
        resource_type: str,
        problems: tuple[tuple[str, str], ...],
        resource: Mapping[str, Any],
    ) -> None:
        super().__init__(message)
        self.resource_type = resource_type
        self.problems = problems
        self.resource = resource

    def __repr__(self) -> str:
        return f"ModelValidationError({self.resource_type!r}, problems={len(self.problems)})"
