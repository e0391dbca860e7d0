"""``POST <root>/oauth2/introspect`` (RFC 7662), as client code calls it at Epic (docs/epic-notes.md §2.9).

Epic's documentation reviewed does not describe it; client code reads ``active``, ``scope``, ``client_id``,
``exp``, ``sub`` and ``iss`` (unverified at Epic, docs/epic-notes.md §2.9). The sandbox answers those for its
own access tokens: a live token is ``active: true``; anything else (unknown, expired, malformed) is just
``{"active": false}``, as RFC 7662 says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .. import _json
from ._http import JSON_UTF8, Request, Response
from ._oauth_wire import oauth_error

__all__ = ["IntrospectionEndpoint"]

_FORM = "application/x-www-form-urlencoded"


class _TokenTable(Protocol):
    def describe_token(self, token: str) -> dict[str, Any] | None: ...


class IntrospectionEndpoint:
    """The route handler; ``issuer`` is a callable (the served port may move)."""

    def __init__(self, tokens: _TokenTable, issuer: Callable[[], str]) -> None:
        self.tokens = tokens
        self.issuer = issuer

    def __call__(self, request: Request) -> Response:
        form = request.form() if request.method == "POST" and request.content_type == _FORM else []
        token = dict(form).get("token")
        if not token:
            return oauth_error("invalid_request")
        info = self.tokens.describe_token(token)
        answer: dict[str, Any] = {"active": False}
        if info is not None:
            answer = {"active": True, **info, "token_type": "Bearer", "iss": self.issuer()}
        return Response(
            200, [("content-type", JSON_UTF8), ("cache-control", "no-store")], _json.dumps(answer)
        )
