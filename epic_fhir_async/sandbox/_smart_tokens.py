"""The token side of SMART App Launch: client authentication, the code and refresh grants, the token response.

Reproduces Epic's behaviour in docs/epic-notes.md §2.3, §2.4 and §2.6. The OAuth server (:mod:`._oauth`)
hands the ``authorization_code`` and ``refresh_token`` grant types to :class:`SmartTokens` after its own form
checks; backend ``client_credentials`` never comes here. Failures answer Epic's bare bodies
(``{"error": "invalid_client" | "invalid_grant", "error_description": null}``, docs/epic-notes.md §1.7) and
record the real reason like the backend path: ``OAuthServer.failures`` and
``stats["token_failures:<reason>"]``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from joserfc.jwk import KeySet

from .._config import JWT_BEARER_ASSERTION_TYPE
from ._clock import SandboxClock
from ._http import Request, Response
from ._idtoken import OidcSigner, id_token_claims
from ._jwt import AssertionRejected, verify_assertion
from ._oauth import OAuthServer
from ._oauth_wire import JtiCache, b64url, oauth_error, token_response
from ._smart_model import Grant, SmartApp, SmartSettings, dstu2_patient_id, jwt_shaped

__all__ = ["SmartTokens", "s256"]

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 §4.1


def s256(verifier: str) -> str:
    """PKCE S256: base64url(SHA-256(verifier)) without padding (RFC 7636 §4.2)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


class GrantRejected(Exception):
    """A code/refresh request failed; ``error`` goes on the wire, ``reason`` only to stats and failures."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


@dataclass
class _Code:
    grant: Grant
    redirect_uri: str
    challenge: str | None
    expires_at: float
    used: bool = False


@dataclass
class _Refresh:
    grant: Grant
    expires_at: float | None  # None: indefinite persistent access


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``Authorization: Basic base64(urlencode(id):urlencode(secret))``; None without Basic.

    Epic's encoding of client secrets (docs/epic-notes.md §2.3).
    """
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise GrantRejected("invalid_client", "malformed_basic") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise GrantRejected("invalid_client", "malformed_basic")
    return unquote_plus(client_id), unquote_plus(secret)


class SmartTokens:
    """Authorization codes and refresh tokens of one sandbox, and the two grants that redeem them."""

    def __init__(
        self,
        *,
        oauth: OAuthServer,
        apps: Mapping[str, SmartApp],
        settings: Callable[[], SmartSettings],
        signer: OidcSigner,
        clock: SandboxClock,
        stats: collections.Counter[str],
        fhir_base: Callable[[], str],
        style_url: Callable[[], str],
    ) -> None:
        self.oauth = oauth
        self.apps = apps
        self.settings = settings
        self.signer = signer
        self.clock = clock
        self.stats = stats
        self.fhir_base = fhir_base
        self.style_url = style_url
        self._codes: dict[str, _Code] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._seen = JtiCache()
        #: Access tokens from code exchanges -> their grant (dynamic registration's initial tokens,
        #: docs/epic-notes.md §2.7).
        self.access_grants: dict[str, Grant] = {}

    # -- codes ------------------------------------------------------------------------------------------
    def issue_code(self, grant: Grant, *, redirect_uri: str, challenge: str | None) -> str:
        """A single-use authorization code bound to the client, redirect URI, PKCE challenge and context."""
        now = self.clock.now()
        for stale in [c for c, rec in self._codes.items() if rec.expires_at <= now]:
            del self._codes[stale]
        expires_at = now + self.settings().code_lifetime
        code = jwt_shaped("code", {"client_id": grant.client_id, "exp": int(expires_at)})
        self._codes[code] = _Code(grant, redirect_uri, challenge, expires_at)
        self.stats["auth_codes_issued"] += 1
        return code

    # -- grants (registered with the OAuth server) ----------------------------------------------------------
    def authorization_code(self, form: Mapping[str, str], request: Request) -> Response:
        try:
            app = self._authenticate(form, request)
            grant = self._redeem_code(app, form)
        except GrantRejected as exc:
            return self.reject(exc)
        refresh = None
        if app.persistent_access and not app.public:
            refresh = self._new_refresh(grant, self._first_refresh_expiry(app))
        self.stats["code_exchanges"] += 1
        return self.respond(grant, refresh=refresh, with_context=True)

    def refresh_token(self, form: Mapping[str, str], request: Request) -> Response:
        token = form.get("refresh_token") or ""
        try:
            record = self._redeem_refresh(self._authenticate(form, request), token)
        except GrantRejected as exc:
            return self.reject(exc)
        renewed = None
        if record.expires_at is not None:
            # Rolling persistent access (docs/epic-notes.md §2.6): each refresh hands out a new refresh token
            # (the old one stops working) that keeps the FIRST token's expiry; indefinite access keeps its one
            # token.
            del self._refresh[token]
            renewed = self._new_refresh(record.grant, record.expires_at)
        self.stats["refresh_exchanges"] += 1
        return self.respond(record.grant, refresh=renewed, with_context=False)

    # -- helpers ---------------------------------------------------------------------------------------
    def reject(self, exc: GrantRejected) -> Response:
        self.oauth.record_failure(exc.reason)
        return oauth_error(exc.error)

    def _authenticate(self, form: Mapping[str, str], request: Request) -> SmartApp:
        """Public (client_id), secret (Basic or client_secret_post) or private_key_jwt.

        Epic's client authentication methods: docs/epic-notes.md §2.3.
        """
        basic = _basic_credentials(request.headers.get("authorization"))
        if basic is not None:
            if "client_id" in form:  # docs/epic-notes.md §2.3: with Basic auth, client_id is not in the body
                raise GrantRejected("invalid_client", "client_id_with_basic")
            return self._check_secret(*basic)
        if "client_assertion" in form or "client_assertion_type" in form:
            return self._check_assertion(form)
        app = self.apps.get(form.get("client_id") or "")
        if app is None:
            raise GrantRejected("invalid_client", "unknown_client")
        if "client_secret" in form:
            return self._check_secret(app.client_id, form["client_secret"])
        if not app.public:
            raise GrantRejected("invalid_client", "missing_client_auth")
        return app

    def _check_secret(self, client_id: str, secret: str) -> SmartApp:
        app = self.apps.get(client_id)
        if app is None:
            raise GrantRejected("invalid_client", "unknown_client")
        if app.secret is None or not secrets.compare_digest(app.secret.encode(), secret.encode()):
            raise GrantRejected("invalid_client", "bad_secret")
        return app

    def _check_assertion(self, form: Mapping[str, str]) -> SmartApp:
        if form.get("client_assertion_type") != JWT_BEARER_ASSERTION_TYPE:
            raise GrantRejected("invalid_client", "bad_assertion_type")
        client_id = self.check_client_assertion(
            form.get("client_assertion") or "", form, keys_for=self._keys_for, error="invalid_client"
        )
        return self.apps[client_id]

    def check_client_assertion(
        self, assertion: str, form: Mapping[str, str], *, keys_for: Callable[[str], KeySet], error: str
    ) -> str:
        """The client id of a valid, unreplayed assertion (docs/epic-notes.md §1.4; ``aud``: the token URL).

        ``error`` goes on the wire for a bad or replayed assertion; a ``client_id`` in the form that names
        another client is always ``invalid_client``.
        """
        now = self.clock.now()
        try:
            client_id, jti, exp = verify_assertion(
                assertion, keys_for=keys_for, audience=self.oauth.assertion_audiences, now=now
            )
        except AssertionRejected as exc:
            raise GrantRejected(error, exc.reason) from None
        if form.get("client_id", client_id) != client_id:
            raise GrantRejected("invalid_client", "client_id_mismatch")
        if not self._seen.remember(client_id, jti, exp, now):
            raise GrantRejected(error, "replayed_jti")
        return client_id

    def _keys_for(self, client_id: str) -> KeySet:
        app = self.apps.get(client_id)
        if app is None or app.keys is None:
            raise AssertionRejected("unknown_client")
        return app.keys

    def _redeem_code(self, app: SmartApp, form: Mapping[str, str]) -> Grant:
        record = self._codes.get(form.get("code") or "")
        if record is None:
            raise GrantRejected("invalid_grant", "unknown_code")
        if record.grant.client_id != app.client_id:
            raise GrantRejected("invalid_grant", "code_client_mismatch")
        if record.used:
            raise GrantRejected("invalid_grant", "reused_code")
        if record.expires_at <= self.clock.now():
            raise GrantRejected("invalid_grant", "expired_code")
        # Single use: even a failed attempt burns the code, so a stolen code gets one guess at the verifier.
        record.used = True
        if form.get("redirect_uri") != record.redirect_uri:
            raise GrantRejected("invalid_grant", "redirect_uri_mismatch")
        if record.challenge is not None:
            verifier = form.get("code_verifier")
            if verifier is None:
                raise GrantRejected("invalid_grant", "missing_code_verifier")
            if not _VERIFIER.fullmatch(verifier) or not secrets.compare_digest(
                s256(verifier), record.challenge
            ):
                raise GrantRejected("invalid_grant", "bad_code_verifier")
        return record.grant

    def _redeem_refresh(self, app: SmartApp, token: str) -> _Refresh:
        record = self._refresh.get(token)
        if record is None:
            raise GrantRejected("invalid_grant", "unknown_refresh_token")
        if record.grant.client_id != app.client_id:
            raise GrantRejected("invalid_grant", "refresh_client_mismatch")
        if record.expires_at is not None and record.expires_at <= self.clock.now():
            del self._refresh[token]
            raise GrantRejected("invalid_grant", "expired_refresh_token")
        return record

    def _first_refresh_expiry(self, app: SmartApp) -> float | None:
        if app.refresh_lifetime is None:
            return None
        return self.clock.now() + app.refresh_lifetime

    def _new_refresh(self, grant: Grant, expires_at: float | None) -> str:
        token = secrets.token_urlsafe(48)  # Epic's refresh tokens are opaque, not JWTs
        self._refresh[token] = _Refresh(grant, expires_at)
        self.stats["refresh_tokens_issued"] += 1
        return token

    def respond(self, grant: Grant, *, refresh: str | None, with_context: bool) -> Response:
        """The token response of docs/epic-notes.md §2.4; a refresh answers only the token fields (§2.6)."""
        access = self.oauth.issue_token(grant.client_id)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(self.oauth.token_lifetime),
            # Epic grants persistent access without echoing offline_access (docs/epic-notes.md §2.4).
            "scope": " ".join(s for s in grant.scopes if s != "offline_access"),
        }
        if with_context:
            self.access_grants[access] = grant
            if "openid" in grant.scopes:
                body["id_token"] = self._id_token(grant)
            if grant.state is not None:
                body["state"] = grant.state
            if grant.patient is not None:
                body["patient"] = grant.patient
                body["__epic.dstu2.patient"] = dstu2_patient_id(grant.patient)
            if grant.encounter is not None:
                body["encounter"] = grant.encounter
            # A string, as in Epic's examples (docs/epic-notes.md §2.4).
            body["need_patient_banner"] = "true" if grant.need_patient_banner else "false"
            body["smart_style_url"] = self.style_url()
            body.update(grant.context)
        if refresh is not None:
            body["refresh_token"] = refresh
        return token_response(body)

    def _id_token(self, grant: Grant) -> str:
        claims = id_token_claims(
            issuer=self.oauth.token_url.rsplit("/", 1)[0],
            client_id=grant.client_id,
            identity=grant.identity,
            fhir_base=self.fhir_base(),
            scopes=grant.scopes,
            nonce=grant.nonce,
            now=self.clock.now(),
        )
        self.stats["id_tokens_issued"] += 1
        return self.signer.sign(claims)
