"""What Epic's OAuth server puts on the wire, shared by the backend and the SMART token paths.

Every token failure is a bare ``{"error": ..., "error_description": null}`` (400, docs/epic-notes.md §1.7);
token responses carry ``Cache-Control: no-store``. A missing, bad or expired bearer token gets 401 with a JSON
content type and a ``WWW-Authenticate`` challenge (403 ``insufficient_scope`` for a type the client may not
read, docs/epic-notes.md §3.7). The 401 body is Epic's two bytes ``""`` (a JSON empty string), the 403 body is
empty: neither carries an OperationOutcome. A client assertion's ``jti`` is single-use until its ``exp`` (docs/epic-notes.md §1.4).
Epic's tokens, codes and launch tokens are JWT-shaped (docs/epic-notes.md §1.6, §2.2): :func:`b64url` builds
them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._http import JSON_UTF8, Response, json_response

__all__ = [
    "INSUFFICIENT_SCOPE",
    "INVALID_TOKEN",
    "UNAUTHORIZED_BODY",
    "JtiCache",
    "b64url",
    "bearer_failure",
    "oauth_error",
    "token_response",
]

INVALID_TOKEN = 'Bearer error="invalid_token", error_description="The access token provided is not valid"'
INSUFFICIENT_SCOPE = (
    'Bearer error="insufficient_scope", '
    'error_description="The access token provided is valid, but is not authorized for this service"'
)


def oauth_error(error: str, *, with_null_description: bool = True) -> Response:
    """Epic's 400 token-endpoint error; ``error_description`` is literally null unless left out.

    Epic never says which rule failed (docs/epic-notes.md §1.7).
    """
    body: dict[str, Any] = {"error": error}
    if with_null_description:
        body["error_description"] = None
    return json_response(body, 400, content_type=JSON_UTF8)


def token_response(body: Mapping[str, Any]) -> Response:
    """A 200 token response: never cached (RFC 6749 §5.1)."""
    return json_response(
        body, content_type=JSON_UTF8, headers=[("cache-control", "no-store"), ("pragma", "no-cache")]
    )


#: Epic's 401 body: a JSON empty string, not an empty body (docs/epic-notes.md §3.7). A client that explains
#: a 401 only when the body is empty calls it "a non-FHIR body" instead.
UNAUTHORIZED_BODY = b'""'


def bearer_failure(status: int, challenge: str) -> Response:
    """Epic's JSON content type and challenge (docs/epic-notes.md §3.7); no OperationOutcome.

    The 401 body is the two bytes ``""`` as at Epic; a 403's is empty (Epic's 403s are seen empty, never
    with an OperationOutcome).
    """
    body = UNAUTHORIZED_BODY if status == 401 else b""
    return Response(status, [("content-type", JSON_UTF8), ("www-authenticate", challenge)], body)


def b64url(data: bytes) -> str:
    """Base64url without padding, as in a JWT segment."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class JtiCache:
    """Client-assertion ``jti``s seen, each kept until its assertion's ``exp``.

    Epic refuses a replayed ``jti`` until then (docs/epic-notes.md §1.4).
    """

    jtis: dict[tuple[str, str], float] = field(default_factory=dict)  # (client, jti) -> assertion exp

    def remember(self, client_id: str, jti: str, exp: float, now: float) -> bool:
        """Record ``jti`` for ``client_id`` until ``exp``; False when it is a replay."""
        for key in [k for k, expires in self.jtis.items() if expires <= now]:
            del self.jtis[key]
        if (client_id, jti) in self.jtis:
            return False
        self.jtis[(client_id, jti)] = exp
        return True
