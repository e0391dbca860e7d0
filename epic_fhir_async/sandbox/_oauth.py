"""The sandbox's OAuth 2.0 server: SMART Backend Services token endpoint and bearer checks.

Reproduces docs/epic-notes.md §1 and the bearer checks of §3.7: a form-only token endpoint that
verifies JWT client assertions (see :mod:`._jwt`) and answers every authentication failure with Epic's bare
``{"error": "invalid_client", "error_description": null}``; the real reason is kept for tests and operators in
:attr:`OAuthServer.failures` and ``stats["token_failures:<reason>"]``. Access tokens are opaque JWT-shaped
strings (~1 kB, like the sandbox's) that only this server can look up. Who may ask is
:mod:`._oauth_clients`' registry; SMART App Launch plugs its endpoints and grant types in (:mod:`._smart`).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import random
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import _json
from .._config import JWT_BEARER_ASSERTION_TYPE
from ._clock import SandboxClock
from ._http import Request, Response, html_404
from ._jku import JkuKeys
from ._jwt import AssertionRejected, verify_assertion
from ._oauth_clients import ClientRegistry
from ._oauth_wire import (
    INSUFFICIENT_SCOPE,
    INVALID_TOKEN,
    JtiCache,
    b64url,
    bearer_failure,
    oauth_error,
    token_response,
)

__all__ = ["BearerCheck", "OAuthServer"]

_MAX_FAILURES_KEPT = 50

#: Refusals are logged here (INFO): ``epic-fhir sandbox`` shows them, since Epic's answer never says why.
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BearerCheck:
    """Outcome of :meth:`OAuthServer.check_bearer`: a client id, or the 401/403 to send as-is."""

    client_id: str | None
    failure: Response | None


@dataclass
class _Token:
    client_id: str
    expires_at: float


class OAuthServer(ClientRegistry):
    """Epic's ``/oauth2/`` endpoints for one sandbox; all times on the injected :class:`SandboxClock`."""

    def __init__(
        self,
        *,
        token_url: str,
        clock: SandboxClock,
        stats: collections.Counter[str],
        token_lifetime: float = 3600.0,
        seed: int = 0,
        environment: str = "non-production",
        audiences: Iterable[str] = (),
        jku: JkuKeys | None = None,
    ) -> None:
        super().__init__(
            clock=clock,
            environment=environment,
            jku=jku if jku is not None else JkuKeys(clock=clock, stats=stats),
        )
        self.token_url = token_url
        #: Extra assertion ``aud`` values accepted besides the token URL (customer allow-lists for proxies,
        #: docs/epic-notes.md §1.4).
        self.audiences = tuple(audiences)
        self.stats = stats
        self.token_lifetime = token_lifetime
        #: Share of valid token requests answered with Epic's bare-400 flake (docs/epic-notes.md §1.7).
        self.token_flake_rate = 0.0
        #: Recent rejection reasons, newest last (short codes only, never a token or an assertion).
        self.failures: collections.deque[str] = collections.deque(maxlen=_MAX_FAILURES_KEPT)
        self._rng = random.Random(seed)  # noqa: S311 - reproducible fault injection, not crypto
        self._tokens: dict[str, _Token] = {}
        self._seen = JtiCache()
        # SMART App Launch (._smart) adds "authorize", "register", ... through add_route().
        self._routes: dict[str, Callable[[Request], Response]] = {"token": self._token_endpoint}
        # SMART App Launch (._smart) plugs in its grant types.
        self._grants: dict[str, Callable[[Mapping[str, str], Request], Response]] = {}

    @property
    def last_failure(self) -> str | None:
        """The most recent token-endpoint rejection reason, e.g. ``"bad_aud"``."""
        return self.failures[-1] if self.failures else None

    @property
    def assertion_audiences(self) -> tuple[str, ...]:
        """Every ``aud`` a client assertion may carry: the token URL, then the allow-listed extras.

        Epic customers may allow extra audiences for a proxy (docs/epic-notes.md §1.4).
        """
        return (self.token_url, *self.audiences)

    def record_failure(self, reason: str) -> None:
        """Keep a token-endpoint rejection reason for tests and operators (never on the wire, as at Epic).

        Epic's ``invalid_client`` never says which rule failed (docs/epic-notes.md §1.7).
        """
        self.failures.append(reason)
        self.stats[f"token_failures:{reason}"] += 1
        logger.info("token request refused: %s", reason)

    def describe_token(self, token: str) -> dict[str, Any] | None:
        """``client_id``, ``exp``, ``iat`` and (backend clients) ``scope`` of a live access token, else None.

        For token introspection (:mod:`._introspect`); never exposes the token itself.
        """
        record = self._tokens.get(token)
        if record is None or record.expires_at <= self.clock.now():
            return None
        info: dict[str, Any] = {"client_id": record.client_id, "exp": int(record.expires_at)}
        client = self.backend_client(record.client_id)
        if client is not None:
            info["scope"] = self.scope(client)
        return info

    def add_route(self, subpath: str, handler: Callable[[Request], Response]) -> None:
        """Serve another endpoint under ``/oauth2/`` (SMART App Launch adds ``authorize`` ...)."""
        self._routes[subpath.strip("/")] = handler

    def add_grant(self, grant_type: str, handler: Callable[[Mapping[str, str], Request], Response]) -> None:
        """Answer another ``grant_type`` at the token endpoint, after its form checks.

        Used for Epic's code exchange and refresh grants (docs/epic-notes.md §2.3, §2.6).
        """
        self._grants[grant_type] = handler

    # -- tokens -----------------------------------------------------------------------------------------
    def _mint(self, client_id: str, lifetime: float) -> str:
        """An opaque, JWT-shaped token (~1 kB like Epic's); only our table gives it meaning.

        Like Epic's access tokens, it is not meant to be decoded by clients (docs/epic-notes.md §1.6).
        """
        now = self.clock.now()
        jti = secrets.token_urlsafe(24)
        header = b64url(_json.dumps({"alg": "RS256", "typ": "JWT"}))
        claims = {
            "aud": "urn:sandbox:epic_fhir_async",
            "client_id": client_id,
            "epic.eci": secrets.token_urlsafe(24),
            "epic.metadata": secrets.token_urlsafe(150),
            "epic.tokentype": "access",
            "exp": int(now + lifetime),
            "iat": int(now),
            "iss": "urn:sandbox:epic_fhir_async",
            "jti": jti,
            "nbf": int(now),
            "sub": secrets.token_urlsafe(12),
        }
        payload = b64url(_json.dumps(claims))
        signature = b64url(
            hashlib.sha256(f"{header}.{payload}".encode() + secrets.token_bytes(32)).digest() * 8
        )
        token = f"{header}.{payload}.{signature}"
        self._tokens[token] = _Token(client_id, now + lifetime)
        self.stats["tokens_issued"] += 1
        return token

    def issue_token(self, client_id: str, lifetime: float | None = None) -> str:
        """Test helper: a valid bearer token for a registered client, without the JWT dance."""
        if not self.knows(client_id):
            raise KeyError(f"unknown client {client_id!r}")
        return self._mint(client_id, self.token_lifetime if lifetime is None else lifetime)

    def accept_static_token(self, token: str, client_id: str) -> None:
        """Accept ``token`` as a bearer token of the registered ``client_id`` until the sandbox stops (it never
        expires): for tools that take a fixed token (``epic-fhir sandbox --static-token``)."""
        if not token or not self.knows(client_id):
            raise KeyError(f"unknown client {client_id!r}" if token else "empty token")
        self._tokens[token] = _Token(client_id, math.inf)

    # -- HTTP -------------------------------------------------------------------------------------------
    def handle(self, request: Request, subpath: str) -> Response:
        """Answer a request under ``/oauth2/``; other sub-paths get the IIS 404 (docs/epic-notes.md §3.7)."""
        route = self._routes.get(subpath.strip("/"))
        return route(request) if route is not None else html_404()

    def _reject(self, reason: str, error: str = "invalid_client") -> Response:
        self.record_failure(reason)
        return oauth_error(error)

    def _token_endpoint(self, request: Request) -> Response:
        self.stats["token_requests"] += 1
        # docs/epic-notes.md §1.2/§1.7: POST, form body, nothing in the query string; else invalid_request.
        if request.method != "POST":
            return self._reject("not_post", "invalid_request")
        if request.raw_query:
            return self._reject("query_string", "invalid_request")
        if request.content_type != "application/x-www-form-urlencoded":
            return self._reject("not_form", "invalid_request")
        form = request.form_fields()
        grant = self._grants.get(form.get("grant_type", ""))
        if grant is not None:
            return grant(form, request)
        if form.get("grant_type") != "client_credentials":
            return self._reject("unsupported_grant_type", "unsupported_grant_type")
        if form.get("client_assertion_type") != JWT_BEARER_ASSERTION_TYPE:
            return self._reject("bad_assertion_type")
        assertion = form.get("client_assertion")
        if not assertion:
            return self._reject("missing_assertion")
        now = self.clock.now()
        try:
            client_id, jti, exp = verify_assertion(
                assertion,
                keys_for=self.keys_for,
                audience=self.assertion_audiences,
                now=now,
                jku_for=self.jku.url_for,
            )
        except AssertionRejected as exc:
            return self._reject(exc.reason)
        body_client = form.get("client_id")
        if body_client is not None and body_client != client_id:
            return self._reject("client_id_mismatch")
        if not self._seen.remember(client_id, jti, exp, now):
            return self._reject("replayed_jti")
        client = self.backend_client(client_id)
        assert client is not None  # keys_for() accepted it
        if not client.user_mapped:
            self.record_failure("unauthorized_client")
            return oauth_error("unauthorized_client", with_null_description=False)
        if self.token_flake_rate > 0 and self._rng.random() < self.token_flake_rate:
            self.stats["token_flakes"] += 1
            return self._reject("flake")
        token = self._mint(client_id, self.token_lifetime)
        return token_response(
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": int(self.token_lifetime),
                "scope": self.scope(client),
            }
        )

    # -- bearer checks (docs/epic-notes.md §3.7) ------------------------------------------------------
    def check_bearer(self, authorization: str | None, resource_type: str | None) -> BearerCheck:
        """401 for a missing/bad/expired token, 403 when the client lacks ``resource_type``; else the client.

        ``resource_type`` None is a non-type path (bulk files ...): any valid token may use it. A client
        allowed any sub-type of a type (``"Observation?category=..."``) passes the type-level check; sub-type
        filtering (59204 outcome entries) is the FHIR layer's job.
        """
        token = None
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        record = self._tokens.get(token) if token is not None else None
        if token is not None and record is not None and record.expires_at <= self.clock.now():
            del self._tokens[token]  # expired on the sandbox clock: forget it
            record = None
        if record is None or not self.knows(record.client_id):
            self.stats["bearer_failures"] += 1
            logger.info(
                "bearer token refused (401): %s", "no bearer token" if token is None else "unknown or expired"
            )
            return BearerCheck(None, bearer_failure(401, INVALID_TOKEN))
        types = self.allowed_types(record.client_id)
        if (
            resource_type is not None
            and types is not None
            and not any(t == resource_type or t.startswith(resource_type + "?") for t in types)
        ):
            self.stats["bearer_failures"] += 1
            logger.info(
                "bearer token refused (403): client %s may not use %s", record.client_id, resource_type
            )
            return BearerCheck(None, bearer_failure(403, INSUFFICIENT_SCOPE))
        return BearerCheck(record.client_id, None)
