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
from ._jwt import AssertionRejected, load_public_jwks, verify_assertion

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
    ) -> None:
        self.token_url = token_url
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
        # Later issues (SMART App Launch) add "authorize", "introspect", "register" here.
        self._routes: dict[str, Callable[[Request], Response]] = {"token": self._token_endpoint}

    @property
    def last_failure(self) -> str | None:
        """The most recent token-endpoint rejection reason, e.g. ``"bad_aud"``."""
        return self.failures[-1] if self.failures else None

    # -- registry ---------------------------------------------------------------------------------------
    def register_client(
        self,
        client_id: str,
        jwks: Mapping[str, Any],
        *,
        resource_types: Iterable[str] | None = None,
        sync_delay: float = 0.0,
        user_mapped: bool = True,
    ) -> None:
        """Register (or replace) a backend client with its PUBLIC JWKS.

        ``resource_types``: ``"Observation"`` (whole type) or ``"Observation?category=laboratory"`` (a sub-type);
        None allows everything. ``sync_delay`` seconds of sandbox time pass before the keys work (Epic's sync
        delay: ``invalid_client`` until then); ``user_mapped=False`` gives ``unauthorized_client`` (§1.1).
        Raises ValueError for a JWKS with private parts or unsupported keys.
        """
        if not client_id:
            raise ValueError("client_id must be non-empty")
        types = None if resource_types is None else frozenset(resource_types)
        self._clients[client_id] = _Client(
            client_id, load_public_jwks(jwks), types, self.clock.now() + sync_delay, user_mapped
        )

    def allowed_types(self, client_id: str) -> frozenset[str] | None:
        """The client's registered resource types (None = everything); KeyError for an unknown client."""
        return self._clients[client_id].resource_types

    def _scope(self, client: _Client) -> str:
        types = sorted(client.resource_types) if client.resource_types is not None else _DEFAULT_SCOPE_TYPES
        return " ".join(f"system/{t}.read" for t in types)

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
        if client_id not in self._clients:
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
                assertion, keys_for=self._keys_for, audience=self.token_url, now=now
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
        if self.clock.now() < client.active_from:
            raise AssertionRejected("not_synced")
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
        client = self._clients.get(record.client_id)
        if client is None:
            self.stats["bearer_failures"] += 1
            return BearerCheck(None, self._auth_failure(401, _INVALID_TOKEN))
        types = client.resource_types
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
