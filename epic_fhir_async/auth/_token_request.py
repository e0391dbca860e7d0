"""One token request: the form POST, Epic's error codes turned into typed errors with hints, one retry.

Retry policy (:data:`._retry.TOKEN_RETRY`; the loop is here, not in the client's retrying transport, because
a replayed assertion would carry a used ``jti`` and Epic rejects ``jti`` reuse: docs/epic-notes.md §1.4): at
most ONE more attempt, always with a fresh form (a new assertion, a new ``jti``), and only when the failure
looks transient:

* a bare 400: Epic's token endpoint has been seen answering 400 intermittently where a retry succeeds, with
  the same error it gives for wrong client credentials (docs/epic-notes.md §1.7). So a 400 without an OAuth
  ``error``, and Epic's exact credentials error ``{"error": "invalid_client", "error_description": null}``,
  are retried once; genuinely wrong credentials cost one extra request;
* ``invalid_client`` with a description (servers other than Epic explain themselves) only after this auth
  already got a token once: credentials that worked an hour ago rarely broke since;
* 5xx, 429 (after ``Retry-After``, up to the policy's cap) and connection errors.

Never a loop: the second failure raises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING

import anyio
import httpx

from .. import _json, _retry
from .._config import MAX_TOKEN_RESPONSE_BYTES
from .._errors import TokenRequestError, TransportError
from .._http import request_secrets, scrub
from .._urls import redact_url
from ._client_auth import ClientAuthentication
from ._token import AccessToken, parse_token_response

if TYPE_CHECKING:
    from .._http import HTTPSession

__all__ = ["HINTS", "post_token_request", "token_error_from_response"]

logger = logging.getLogger("epic_fhir_async.auth")

_INVALID_CLIENT_HINT = (
    "Epic rejected the client authentication (it never says why). Usual causes, most likely first: "
    "(1) the public key or JWK Set URL was registered or changed recently: Epic's sync can take hours (up to "
    "a day) after an upload, and JWK Set URLs are cached for up to 29 hours; "
    "(2) the client id belongs to the other environment: use the non-production client id for the sandbox "
    "and customer test systems, the production id for production (after the customer activates the app); "
    "(3) the assertion's aud must be exactly the token URL it is posted to ({token_url}); "
    "(4) clock skew: assertions live 240 s from this machine's clock and Epic rejects exp more than 5 minutes "
    "ahead or iat in the future: check NTP; "
    "(5) the kid is not in the registered JWKS, or jku is not exactly the registered JWK Set URL."
)

#: Usual causes of each OAuth error at Epic (docs/epic-notes.md §1.7, §5.2): "invalid_client" says nothing.
HINTS: Mapping[str, str] = {
    "invalid_client": _INVALID_CLIENT_HINT,
    "unauthorized_client": (
        "the client is known but may not use this grant here: at a customer, the backend app must be "
        "activated (downloaded) and its client id mapped to an Epic user by the organisation's Epic Client "
        "Systems Administrator (ECSA); until then Epic answers unauthorized_client."
    ),
    "invalid_scope": (
        "a requested scope is not allowed: Epic grants scopes from the Incoming APIs on the app registration; "
        "request fewer scopes or none (scope is optional for backend services), and allow ~30 minutes for "
        "newly added APIs to sync."
    ),
    "invalid_request": (
        "the token request was malformed: it must be a form-encoded POST with every parameter in the body "
        "(no query string, no '?' after /token); check token_url."
    ),
    "invalid_grant": (
        "the authorization code or refresh token is invalid, expired, already used or issued to another "
        "client: start the SMART launch (or authorization) again."
    ),
    "unsupported_grant_type": "the token endpoint does not support this grant type for this client.",
}

_BARE_400_HINT = (
    "Epic's token endpoint answered a bare 400 twice (it does so transiently; one retry was made). If it "
    "persists, treat it like invalid_client: " + _INVALID_CLIENT_HINT
)


def _oauth_error(response: httpx.Response, secrets: tuple[str, ...] = ()) -> tuple[str | None, str | None]:
    try:
        body = _json.loads(response.content) if response.content.strip() else None
    except ValueError:
        return None, None
    if not isinstance(body, Mapping):
        return None, None
    error = body.get("error")
    description = body.get("error_description")
    return (
        scrub(error, secrets) if isinstance(error, str) and error else None,
        # Scrubbed before it is cut: a cut secret would no longer match.
        scrub(description, secrets)[:300] if isinstance(description, str) and description else None,
    )


def token_error_from_response(response: httpx.Response, *, token_url: str) -> TokenRequestError:
    """The :class:`TokenRequestError` for an error answer of the token endpoint (body already read).

    The request's credentials (client secret, assertion, refresh token, code) are masked in what the server
    wrote, should it echo them.
    """
    status = response.status_code
    error, description = _oauth_error(response, request_secrets(response.request))
    where = redact_url(token_url)
    if error is not None:
        hint = HINTS.get(error)
        message = f"token request to {where} failed: HTTP {status} {error}"
    elif status >= 500:
        hint = "Epic's token endpoint failed on its side (one retry was made); try again later."
        message = f"token request to {where} failed: HTTP {status}"
    elif status == 429:
        hint = (
            "the token endpoint is rate limiting this client; tokens are cached, so check for many processes."
        )
        message = f"token request to {where} was rate limited: HTTP 429"
    else:
        hint = _BARE_400_HINT if status == 400 else None
        message = f"token request to {where} failed: HTTP {status} without an OAuth error code"
    if description:
        message = f"{message}: {description}"
    if hint is not None:
        hint = hint.replace("{token_url}", where)
    return TokenRequestError(
        message, error=error, error_description=description, hint=hint, status_code=status
    )


def _transient(response: httpx.Response, *, succeeded_before: bool) -> bool:
    status = response.status_code
    if status >= 500 or status == 429:
        return True
    if status != 400:
        return False
    error, description = _oauth_error(response)
    return error is None or (error == "invalid_client" and (description is None or succeeded_before))


async def post_token_request(
    session: HTTPSession,
    token_url: str,
    *,
    grant: Mapping[str, str],
    client_auth: ClientAuthentication,
    clock: Callable[[], float],
    wall_clock: Callable[[], float] = time.time,
    succeeded_before: bool = False,
) -> AccessToken:
    """POST one token request (``grant`` parameters + client authentication), retrying once if transient.

    Logs at DEBUG the client id, token URL, expiry and scopes, never the token or the assertion.
    """
    where = redact_url(token_url)
    retrying = _retry.Retrying(_retry.TOKEN_RETRY)
    while True:
        retrying.attempt += 1
        form: MutableMapping[str, str] = dict(grant)
        headers: MutableMapping[str, str] = {"Accept": "application/json"}
        client_auth.apply(form, headers, token_url)  # a fresh assertion (and jti) per attempt
        issued_at = clock()
        response: httpx.Response | None = None
        last_error: Exception
        try:
            response = await session.send(
                "POST",
                token_url,
                data=dict(form),
                headers=dict(headers),
                limit=MAX_TOKEN_RESPONSE_BYTES,  # a token answer is ~1-2 KB (SECURITY.md)
                what="token request to",
            )
        except TransportError as exc:
            last_error = exc
        else:
            if response.status_code == 200:
                try:
                    data = _json.loads(response.content)
                except ValueError:
                    raise TokenRequestError(
                        f"token endpoint {where} answered 200 with a body that is not JSON", status_code=200
                    ) from None
                token = parse_token_response(data, issued_at=issued_at, wall_clock=wall_clock)
                logger.debug(
                    "got a token for client %s from %s: expires in %.0f s, scopes %s",
                    client_auth.client_id,
                    where,
                    token.expires_at - issued_at,
                    " ".join(sorted(token.scopes)) or "(none)",
                )
                return token
            last_error = token_error_from_response(response, token_url=token_url)
            if not _transient(response, succeeded_before=succeeded_before):
                raise last_error
        retry_after = response.headers.get("retry-after") if response is not None else None
        delay = retrying.next_delay(retry_after=retry_after)
        if delay is None:
            raise last_error
        logger.debug(
            "token request for client %s to %s failed transiently (%s); retrying once with a new assertion",
            client_auth.client_id,
            where,
            response.status_code if response is not None else type(last_error).__name__,
        )
        await anyio.sleep(delay)
