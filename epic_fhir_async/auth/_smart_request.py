"""The authorization request of a SMART App Launch: PKCE, state, nonce, scopes and the URL Epic must see.

Epic's rules (docs/epic-notes.md §2.2):

* ``aud`` is the FHIR base, always: Epic requires it whenever a launch context scope is requested and
  shows an error page when it is missing or wrong;
* PKCE ``code_challenge_method=S256`` only: Epic does not support ``plain``;
* ``state`` carries at least 122 random bits and no app data (we use 256 bits from :mod:`secrets`);
* ``launch`` scope and parameter only for an EHR launch: a standalone launch that sends the ``launch`` scope
  gets a login prompt instead of a context.

An :class:`AuthorizationRequest` holds what the callback needs (state, code verifier, nonce) and round-trips
through a plain dict, so the app can keep it in its session store between ``/launch`` and ``/callback``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .._errors import AuthorizationDenied, ConfigurationError, LaunchError, LaunchStateError
from ._epic_auth import mask_secret

__all__ = [
    "AuthorizationRequest",
    "CallbackParams",
    "code_challenge",
    "new_code_verifier",
    "normalise_scopes",
    "parse_callback",
]

#: RFC 6749 §3.3 scope-token characters: printable ASCII except space, ``"`` and ``\``.
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]+$")
_FORMAT = 1


def new_code_verifier() -> str:
    """A PKCE code verifier: 64 random bytes, base64url (86 characters, inside RFC 7636's 43 to 128)."""
    return secrets.token_urlsafe(64)


def code_challenge(verifier: str) -> str:
    """The S256 challenge for ``verifier``: base64url(SHA-256(verifier)) without padding (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def normalise_scopes(scopes: str | Iterable[str] | None) -> tuple[str, ...]:
    """Scopes as a tuple in the given order without duplicates; SMART v1 (``patient/Observation.read``), v2
    (``patient/Observation.rs?category=...``) and Epic's legacy forms pass through unchanged.

    Raises :class:`ConfigurationError` for a scope with whitespace, quotes or backslashes (RFC 6749 §3.3).
    """
    if scopes is None:
        return ()
    items = scopes.split() if isinstance(scopes, str) else list(scopes)
    seen: dict[str, None] = {}
    for scope in items:
        if not isinstance(scope, str) or not _SCOPE_TOKEN.match(scope):
            raise ConfigurationError(
                f"invalid scope {scope!r}: a scope is one token of printable ASCII without spaces, quotes or "
                "backslashes (pass several scopes as a list or a space-separated string)"
            )
        seen.setdefault(scope, None)
    return tuple(seen)


@dataclass(frozen=True, repr=False)
class AuthorizationRequest:
    """One launch in flight: the URL to redirect the browser to and what the callback must check.

    Store it (:meth:`to_dict`) in the user's server-side session when redirecting and pass it back to
    :meth:`SmartLaunch.complete`. It holds the PKCE ``code_verifier``: keep it server-side, never in a URL.
    ``params`` are the authorization parameters, for apps that POST them to the authorize endpoint
    (Epic accepts a form POST for EHR launches, docs/epic-notes.md §2.2).
    """

    url: str
    authorization_endpoint: str
    state: str
    code_verifier: str
    redirect_uri: str
    client_id: str
    fhir_base: str
    scopes: tuple[str, ...]
    nonce: str | None = None
    launch: str | None = None
    created_at: float = 0.0  #: epoch seconds (wall clock) when the request was made

    @property
    def params(self) -> dict[str, str]:
        """The query parameters of :attr:`url`."""
        return dict(httpx.URL(self.url).params.multi_items())

    @property
    def is_ehr_launch(self) -> bool:
        return self.launch is not None

    def __repr__(self) -> str:
        return (
            f"AuthorizationRequest(client_id={self.client_id!r}, fhir_base={self.fhir_base!r}, "
            f"scopes={' '.join(self.scopes)!r}, ehr_launch={self.is_ehr_launch}, "
            f"state={mask_secret(self.state)!r}, code_verifier={mask_secret(self.code_verifier)!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict for the app's session store. It holds the PKCE verifier: keep it server-side."""
        return {
            "format": _FORMAT,
            "url": self.url,
            "authorization_endpoint": self.authorization_endpoint,
            "state": self.state,
            "code_verifier": self.code_verifier,
            "redirect_uri": self.redirect_uri,
            "client_id": self.client_id,
            "fhir_base": self.fhir_base,
            "scopes": list(self.scopes),
            "nonce": self.nonce,
            "launch": self.launch,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthorizationRequest:
        """Rebuild a request saved with :meth:`to_dict`; raises :class:`LaunchStateError` if it is damaged."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise LaunchStateError(
                "the saved authorization request is missing or unreadable: start a new launch"
            )
        names = ("url", "authorization_endpoint", "state", "code_verifier", "redirect_uri", "client_id")
        try:
            s = {k: data[k] for k in (*names, "fhir_base")}
            nonce, launch = data.get("nonce"), data.get("launch")
            scopes = tuple(data["scopes"])
            created_at = float(data["created_at"])
        except (KeyError, TypeError, ValueError):
            raise LaunchStateError(
                "the saved authorization request is incomplete: start a new launch"
            ) from None
        if not all(isinstance(v, str) and v for v in s.values()) or not all(
            v is None or isinstance(v, str) for v in (nonce, launch)
        ):
            raise LaunchStateError("the saved authorization request is damaged: start a new launch")
        return cls(
            url=s["url"],
            authorization_endpoint=s["authorization_endpoint"],
            state=s["state"],
            code_verifier=s["code_verifier"],
            redirect_uri=s["redirect_uri"],
            client_id=s["client_id"],
            fhir_base=s["fhir_base"],
            scopes=scopes,
            nonce=nonce,
            launch=launch,
            created_at=created_at,
        )


@dataclass(frozen=True)
class CallbackParams:
    """What the authorization server put on the redirect back to the app."""

    code: str | None
    state: str | None
    error: str | None
    error_description: str | None
    error_uri: str | None


def _first(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value if isinstance(value, str) and value else None


def parse_callback(callback: str | httpx.URL | Mapping[str, Any]) -> CallbackParams:
    """Read the callback: a full URL (or just its query string) or a mapping of query parameters.

    A mapping may be Starlette's ``request.query_params``, a Flask ``request.args``, or ``parse_qs`` output.
    """
    if isinstance(callback, Mapping):
        params: Mapping[str, Any] = callback
    else:
        text = str(callback)
        url = httpx.URL(text if "://" in text or text.startswith("/") else "/?" + text.lstrip("?"))
        params = dict(url.params.items())
    return CallbackParams(
        code=_first(params, "code"),
        state=_first(params, "state"),
        error=_first(params, "error"),
        error_description=_first(params, "error_description"),
        error_uri=_first(params, "error_uri"),
    )


def check_callback(
    request: AuthorizationRequest,
    callback: CallbackParams,
    *,
    max_age: float | None,
    wall_clock: float | None = None,
) -> str:
    """The authorization code, after the state, error and age checks; raises the matching launch error."""
    if callback.state is not None and not hmac.compare_digest(
        callback.state.encode("utf-8"), request.state.encode("utf-8")
    ):
        # Checked before error=: a denial for someone else's launch says nothing about this one.
        raise LaunchStateError(
            "the callback's state does not match this launch (a forged, replayed or crossed callback): "
            "start a new launch"
        )
    if callback.error is not None:
        detail = f": {callback.error_description[:300]}" if callback.error_description else ""
        raise AuthorizationDenied(
            f"the authorization server refused the launch ({callback.error}){detail}",
            error=callback.error,
            error_description=callback.error_description,
            error_uri=callback.error_uri,
        )
    if callback.state is None:
        raise LaunchStateError("the callback has no state parameter: start a new launch")
    now = time.time() if wall_clock is None else wall_clock
    if max_age is not None and now - request.created_at > max_age:
        raise LaunchStateError(
            f"this launch started {now - request.created_at:.0f} s ago (more than {max_age:.0f} s): Epic's "
            "authorization codes are short-lived, start a new launch"
        )
    if callback.code is None:
        raise LaunchError("the callback has neither a code nor an error: check the redirect_uri route")
    return callback.code
