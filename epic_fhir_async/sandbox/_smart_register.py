"""Dynamic client registration and the JWT-bearer grant, as Epic runs them (docs/epic-notes.md §2.7).

A patient-facing app first does a standalone launch as a public client; the access token it gets is a one-time
"initial access token" for ``POST <root>/oauth2/register`` (JSON ``{"software_id": <app client id>, "jwks":
{...}}``), which answers 201 with a new ``G...`` client id. That dynamic client then gets access tokens with
``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and an assertion it signs (``iss`` = ``sub`` = the
dynamic client id), always for the user and context of the original launch.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from joserfc.jwk import KeySet

from .. import _json
from ._clock import SandboxClock
from ._http import JSON_UTF8, Request, Response, json_response
from ._jwt import AssertionRejected, load_public_jwks
from ._oauth import OAuthServer
from ._oauth_wire import INVALID_TOKEN, bearer_failure
from ._smart_model import Grant
from ._smart_tokens import GrantRejected, SmartTokens

__all__ = ["JWT_BEARER_GRANT", "DynamicClients"]

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _metadata_error(description: str) -> Response:
    # RFC 7591 §3.2.2's error for a bad registration body.
    return json_response(
        {"error": "invalid_client_metadata", "error_description": description}, 400, content_type=JSON_UTF8
    )


class DynamicClients:
    """Clients registered at ``/oauth2/register``: their keys and the grant they were registered under."""

    def __init__(
        self, *, oauth: OAuthServer, tokens: SmartTokens, clock: SandboxClock, stats: collections.Counter[str]
    ) -> None:
        self.oauth = oauth
        self.tokens = tokens
        self.clock = clock
        self.stats = stats
        self._clients: dict[str, tuple[KeySet, Grant]] = {}
        self._used: set[str] = set()  # initial access tokens already spent

    def register(self, request: Request) -> Response:
        """``POST /oauth2/register`` with ``Authorization: Bearer <initial access token>``."""
        if request.method != "POST":
            return json_response({"error": "invalid_request"}, 405, content_type=JSON_UTF8)
        header = request.headers.get("authorization")
        check = self.oauth.check_bearer(header, None)
        initial = (header or "").partition(" ")[2].strip()
        grant = self.tokens.access_grants.get(initial)
        if check.failure is not None or grant is None or initial in self._used:
            self.stats["register_failures"] += 1
            # Not a live, unspent initial access token: the FHIR server's 401 (docs/epic-notes.md §3.7 shape).
            return check.failure or bearer_failure(401, INVALID_TOKEN)
        if request.content_type != "application/json":
            return _metadata_error("the body must be application/json")
        try:
            body = _json.loads(request.body)
        except ValueError:
            return _metadata_error("the body is not JSON")
        if not isinstance(body, Mapping) or body.get("software_id") != grant.client_id:
            return _metadata_error("software_id must be the client id the initial access token was issued to")
        try:
            keys = load_public_jwks(body.get("jwks") or {})
        except (ValueError, TypeError) as exc:
            return _metadata_error(str(exc))
        self._used.add(initial)
        client_id = "G" + str(uuid.uuid4()).upper()
        self._clients[client_id] = (keys, replace(grant, client_id=client_id))
        self.oauth.register_app(client_id, resource_types=self.oauth.allowed_types(grant.client_id))
        self.stats["dynamic_registrations"] += 1
        app = self.tokens.apps[grant.client_id]
        answer: dict[str, Any] = {
            "redirect_uris": list(app.redirect_uris),
            "token_endpoint_auth_method": "none",
            "grant_types": [JWT_BEARER_GRANT],
            "software_id": grant.client_id,
            "client_id": client_id,
            "client_id_issued_at": int(self.clock.now()),
            "jwks": {"keys": [k.as_dict(private=False) for k in keys.keys]},
        }
        return json_response(answer, 201, content_type=JSON_UTF8)

    def jwt_bearer(self, form: Mapping[str, str], request: Request) -> Response:
        """The JWT-bearer grant: an access token for the registered user, bound to the dynamic client."""
        try:
            grant = self._verify(form)
        except GrantRejected as exc:
            return self.tokens.reject(exc)
        self.stats["jwt_bearer_exchanges"] += 1
        return self.tokens.respond(grant, refresh=None, with_context=True)

    def _verify(self, form: Mapping[str, str]) -> Grant:
        client_id = self.tokens.check_client_assertion(
            form.get("assertion") or "", form, keys_for=self._keys_for, error="invalid_grant"
        )
        return self._clients[client_id][1]

    def _keys_for(self, client_id: str) -> KeySet:
        entry = self._clients.get(client_id)
        if entry is None:
            raise AssertionRejected("unknown_client")
        return entry[0]
