"""The sandbox's OAuth 2.0 server: SMART Backend Services token endpoint and bearer checks.

Reproduces epic-behaviour.md §1 and the "Emulator checklist" items 5 to 9 and 14: a form-only token endpoint that
verifies JWT client assertions (see :mod:`._jwt`) and answers every authentication failure with Epic's bare
``{"error": "invalid_client", "error_description": null}``; the real reason is kept for tests and operators in
:attr:`OAuthServer.failures` and ``stats["token_failures:<reason>"]``. Access tokens are opaque JWT-shaped
strings (~1 kB, like the sandbox's) that only this server can look up.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import random
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import KeySet

from .. import _json
from .._config import JWT_BEARER_ASSERTION_TYPE
from ._clock import SandboxClock
from ._http import Request, Response, html_404, json_response
from ._jku import JkuKeys
from ._jwt import AssertionRejected, load_public_jwks, load_static_jwks, verify_assertion
from ._scopes import SCOPE_STYLES, ScopeStyle, scope_string

__all__ = ["BearerCheck", "OAuthServer"]

_JSON_UTF8 = "application/json; charset=utf-8"
_INVALID_TOKEN = 'Bearer error="invalid_token", error_description="The access token provided is not valid"'
_INSUFFICIENT_SCOPE = (
    'Bearer error="insufficient_scope", '
    'error_description="The access token provided is valid, but is not authorized for this service"'
)
#: Types granted in the ``scope`` of a client registered with ``resource_types=None`` (everything allowed).
_DEFAULT_SCOPE_TYPES = (
    "AllergyIntolerance",
    "Binary",
    "Condition",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Group",
    "Immunization",
    "MedicationRequest",
    "Observation",
    "Patient",
    "Procedure",
)
_MAX_FAILURES_KEPT = 50


@dataclass(frozen=True)
class BearerCheck:
    """Outcome of :meth:`OAuthServer.check_bearer`: a client id, or the 401/403 to send as-is."""

    client_id: str | None
    failure: Response | None


@dataclass
class _Client:
    client_id: str
    keys: KeySet
    resource_types: frozenset[str] | None
    active_from: float  # sandbox time when the key "syncs" (Epic's key sync delay, §5)
    user_mapped: bool
    scope_style: ScopeStyle = "v1"
    environment: str = "non-production"
    # APIs added after registration: (sandbox time they sync, types); 403 until then (§5 sync delays).
    pending: list[tuple[float, frozenset[str]]] = field(default_factory=list)


@dataclass
class _Token:
    client_id: str
    expires_at: float


@dataclass
class _Seen:
    jtis: dict[tuple[str, str], float] = field(default_factory=dict)  # (client, jti) -> assertion exp

    def purge(self, now: float) -> None:
        for key in [k for k, exp in self.jtis.items() if exp <= now]:
            del self.jtis[key]


def _oauth_error(error: str, *, with_null_description: bool = True) -> Response:
    body: dict[str, Any] = {"error": error}
    if with_null_description:
        body["error_description"] = None  # §1.7: literally null
    return json_response(body, 400, content_type=_JSON_UTF8)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class OAuthServer:
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
        self.token_url = token_url
        #: "non-production" (Epic's sandbox) or "production": clients registered for the other one are refused.
        self.environment = environment
        #: Extra assertion ``aud`` values accepted besides the token URL (customer allow-lists for proxies, §1.4).
        self.audiences = tuple(audiences)
        #: Clients registered by JWK Set URL and their cached keys (§1.5).
        self.jku = jku if jku is not None else JkuKeys(clock=clock, stats=stats)
        self.clock = clock
        self.stats = stats
        self.token_lifetime = token_lifetime
        #: Fraction of otherwise-valid token requests answered with Epic's bare-400 flake (§1.7).
        self.token_flake_rate = 0.0
        #: Recent rejection reasons, newest last (short codes only, never a token or an assertion).
        self.failures: collections.deque[str] = collections.deque(maxlen=_MAX_FAILURES_KEPT)
        self._rng = random.Random(seed)  # noqa: S311 - reproducible fault injection, not crypto
        self._clients: dict[str, _Client] = {}
        self._tokens: dict[str, _Token] = {}
        self._seen = _Seen()
        # SMART App Launch (._smart) adds "authorize", "register", ... through add_route().
        self._routes: dict[str, Callable[[Request], Response]] = {"token": self._token_endpoint}
        # SMART App Launch (._smart) plugs in its grant types and its apps' resource types (None = all).
        self._grants: dict[str, Callable[[Mapping[str, str], Request], Response]] = {}
        self._app_types: dict[str, frozenset[str] | None] = {}

    @property
    def last_failure(self) -> str | None:
        """The most recent token-endpoint rejection reason, e.g. ``"bad_aud"``."""
        return self.failures[-1] if self.failures else None

    # -- registry ---------------------------------------------------------------------------------------
    def register_client(
        self,
        client_id: str,
        jwks: Mapping[str, Any] | None = None,
        *,
        jku: str | None = None,
        static: bool = False,
        resource_types: Iterable[str] | None = None,
        sync_delay: float = 0.0,
        user_mapped: bool = True,
        scope_style: ScopeStyle = "v1",
        environment: str | None = None,
    ) -> None:
        """Register (or replace) a backend client with its PUBLIC JWKS, or its JWK Set URL ``jku``.

        ``jwks`` behaves like a JKU whose keys are already cached (every algorithm, keys picked by ``kid``);
        ``static=True`` is Epic's static key upload (§1.5: one RSA key, only kty/e/n kept, ``kid`` ignored, no
        ES256/ES384); ``jku`` is fetched and cached as Epic does (see :mod:`._jku`). ``resource_types``:
        ``"Observation"`` (whole type) or ``"Observation?category=laboratory"`` (a sub-type); None allows
        everything. ``sync_delay`` seconds of sandbox time pass before the keys work (Epic's sync delay:
        ``invalid_client`` until then); ``user_mapped=False`` gives ``unauthorized_client`` (§1.1).
        ``scope_style``: "v1", "v2" or "epic" (the token response's ``scope``, §2.8). ``environment``: the
        environment this client ID belongs to (default: this server's); Epic refuses a production ID in the
        sandbox and vice versa with ``invalid_client`` (§1.1, §5). Raises ValueError for a JWKS with private
        parts or unsupported keys.
        """
        if not client_id:
            raise ValueError("client_id must be non-empty")
        if (jwks is None) == (jku is None):
            raise ValueError("register a client with exactly one of jwks or jku")
        if scope_style not in SCOPE_STYLES:
            raise ValueError(f"scope_style must be one of {', '.join(SCOPE_STYLES)}")
        if jku is not None:
            if static:
                raise ValueError("static=True needs the uploaded key as jwks, not a JWK Set URL")
            self.jku.register(client_id, jku)
            keys = KeySet([])
        else:
            assert jwks is not None
            keys = load_static_jwks(jwks) if static else load_public_jwks(jwks)
            self.jku.forget(client_id)
        types = None if resource_types is None else frozenset(resource_types)
        self._clients[client_id] = _Client(
            client_id,
            keys,
            types,
            self.clock.now() + sync_delay,
            user_mapped,
            scope_style,
            environment or self.environment,
        )

    def add_resource_types(
        self, client_id: str, resource_types: Iterable[str], *, sync_delay: float = 0.0
    ) -> None:
        """Add Incoming APIs to a registered client; until ``sync_delay`` has passed they answer 403 (§5)."""
        client = self._clients[client_id]
        client.pending.append((self.clock.now() + sync_delay, frozenset(resource_types)))

    def describe_token(self, token: str) -> dict[str, Any] | None:
        """``client_id``, ``exp``, ``iat`` and (backend clients) ``scope`` of a live access token, else None.

        For token introspection (:mod:`._introspect`); never exposes the token itself.
        """
        record = self._tokens.get(token)
        if record is None or record.expires_at <= self.clock.now():
            return None
        info: dict[str, Any] = {"client_id": record.client_id, "exp": int(record.expires_at)}
        client = self._clients.get(record.client_id)
        if client is not None:
            info["scope"] = self._scope(client)
        return info

    def add_route(self, subpath: str, handler: Callable[[Request], Response]) -> None:
        """Serve another endpoint under ``/oauth2/`` (SMART App Launch adds ``authorize`` ...)."""
        self._routes[subpath.strip("/")] = handler

    def add_grant(self, grant_type: str, handler: Callable[[Mapping[str, str], Request], Response]) -> None:
        """Answer another ``grant_type`` at the token endpoint, after its form checks (§2.3, §2.6)."""
        self._grants[grant_type] = handler

    def register_app(self, client_id: str, *, resource_types: Iterable[str] | None = None) -> None:
        """Let a SMART app's access tokens pass :meth:`check_bearer` (same resource-type rules as a backend)."""
        self._app_types[client_id] = None if resource_types is None else frozenset(resource_types)

    def allowed_types(self, client_id: str) -> frozenset[str] | None:
        """The client's registered resource types (None = everything); KeyError for an unknown client."""
        if client_id not in self._clients:
            return self._app_types[client_id]
        client = self._clients[client_id]
        if client.pending and client.resource_types is not None:
            now = self.clock.now()
            synced = [types for at, types in client.pending if at <= now]
            if synced:
                client.resource_types = client.resource_types.union(*synced)
                client.pending = [(at, types) for at, types in client.pending if at > now]
        return client.resource_types

    def _scope(self, client: _Client) -> str:
        types = self.allowed_types(client.client_id)
        return scope_string(_DEFAULT_SCOPE_TYPES if types is None else types, client.scope_style)

    # -- tokens -----------------------------------------------------------------------------------------
    def _mint(self, client_id: str, lifetime: float) -> str:
        """An opaque, JWT-shaped token (~1 kB like Epic's, §1.6); only our table gives it meaning."""
        now = self.clock.now()
        jti = secrets.token_urlsafe(24)
        header = _b64(_json.dumps({"alg": "RS256", "typ": "JWT"}))
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
        payload = _b64(_json.dumps(claims))
        signature = _b64(
            hashlib.sha256(f"{header}.{payload}".encode() + secrets.token_bytes(32)).digest() * 8
        )
        token = f"{header}.{payload}.{signature}"
        self._tokens[token] = _Token(client_id, now + lifetime)
        self.stats["tokens_issued"] += 1
        return token

    def issue_token(self, client_id: str, lifetime: float | None = None) -> str:
        """Test helper: a valid bearer token for a registered client, without the JWT dance."""
        if client_id not in self._clients and client_id not in self._app_types:
            raise KeyError(f"unknown client {client_id!r}")
        return self._mint(client_id, self.token_lifetime if lifetime is None else lifetime)

    # -- HTTP -------------------------------------------------------------------------------------------
    def handle(self, request: Request, subpath: str) -> Response:
        """Answer a request under ``/oauth2/``; unknown sub-paths get the IIS HTML 404 (§3.7)."""
        route = self._routes.get(subpath.strip("/"))
        return route(request) if route is not None else html_404()

    def _reject(self, reason: str) -> Response:
        self.failures.append(reason)
        self.stats[f"token_failures:{reason}"] += 1
        return _oauth_error("invalid_client")

    def _token_endpoint(self, request: Request) -> Response:
        self.stats["token_requests"] += 1
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        # §1.2/§1.7: POST, form body, nothing in the query string; else invalid_request.
        if request.method != "POST" or ctype != "application/x-www-form-urlencoded" or request.raw_query:
            reason = (
                "not_post"
                if request.method != "POST"
                else ("query_string" if request.raw_query else "not_form")
            )
            self.failures.append(reason)
            self.stats[f"token_failures:{reason}"] += 1
            return _oauth_error("invalid_request")
        form: dict[str, str] = {}
        for key, value in request.form():
            form.setdefault(key, value)
        grant = self._grants.get(form.get("grant_type", ""))
        if grant is not None:
            return grant(form, request)
        if form.get("grant_type") != "client_credentials":
            self.failures.append("unsupported_grant_type")
            self.stats["token_failures:unsupported_grant_type"] += 1
            return json_response(
                {"error": "unsupported_grant_type", "error_description": None}, 400, content_type=_JSON_UTF8
            )
        if form.get("client_assertion_type") != JWT_BEARER_ASSERTION_TYPE:
            return self._reject("bad_assertion_type")
        assertion = form.get("client_assertion")
        if not assertion:
            return self._reject("missing_assertion")
        now = self.clock.now()
        try:
            client_id, jti, exp = verify_assertion(
                assertion,
                keys_for=self._keys_for,
                audience=(self.token_url, *self.audiences),
                now=now,
                jku_for=self.jku.url_for,
            )
        except AssertionRejected as exc:
            return self._reject(exc.reason)
        body_client = form.get("client_id")
        if body_client is not None and body_client != client_id:
            return self._reject("client_id_mismatch")
        self._seen.purge(now)
        if (client_id, jti) in self._seen.jtis:
            return self._reject("replayed_jti")
        self._seen.jtis[(client_id, jti)] = exp
        client = self._clients[client_id]
        if not client.user_mapped:
            self.failures.append("unauthorized_client")
            self.stats["token_failures:unauthorized_client"] += 1
            return _oauth_error("unauthorized_client", with_null_description=False)
        if self.token_flake_rate > 0 and self._rng.random() < self.token_flake_rate:
            self.stats["token_flakes"] += 1
            return self._reject("flake")
        token = self._mint(client_id, self.token_lifetime)
        return json_response(
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": int(self.token_lifetime),
                "scope": self._scope(client),
            },
            content_type=_JSON_UTF8,
            headers=[("cache-control", "no-store"), ("pragma", "no-cache")],
        )

    def _keys_for(self, client_id: str) -> KeySet:
        client = self._clients.get(client_id)
        if client is None:
            raise AssertionRejected("unknown_client")
        if client.environment != self.environment:
            raise AssertionRejected("wrong_environment")  # non-prod ID at production, or vice versa (§1.1)
        if self.clock.now() < client.active_from:
            raise AssertionRejected("not_synced")
        if self.jku.url_for(client_id) is not None:
            return self.jku.keys(client_id)
        return client.keys

    # -- bearer checks (§3.7, checklist 14) -------------------------------------------------------------
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
        if record is None:
            self.stats["bearer_failures"] += 1
            return BearerCheck(None, self._auth_failure(401, _INVALID_TOKEN))
        if record.client_id not in self._clients and record.client_id not in self._app_types:
            self.stats["bearer_failures"] += 1
            return BearerCheck(None, self._auth_failure(401, _INVALID_TOKEN))
        types = self.allowed_types(record.client_id)
        if (
            resource_type is not None
            and types is not None
            and not any(t == resource_type or t.startswith(resource_type + "?") for t in types)
        ):
            self.stats["bearer_failures"] += 1
            return BearerCheck(None, self._auth_failure(403, _INSUFFICIENT_SCOPE))
        return BearerCheck(record.client_id, None)

    @staticmethod
    def _auth_failure(status: int, challenge: str) -> Response:
        # §3.7: empty body but still a JSON content type, exactly as Epic answers.
        return Response(status, [("content-type", _JSON_UTF8), ("www-authenticate", challenge)], b"")
