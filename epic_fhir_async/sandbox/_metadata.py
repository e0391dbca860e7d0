"""``GET [base]/metadata`` per ``Epic-Client-ID``, rendered once and cached (docs/epic-notes.md §2.1).

Epic lists the ``register`` URI only for a request that names a client (``Epic-Client-ID``) allowed to register
dynamically, and some customers override the OAuth endpoints per client ID, so the statement depends on that
header. Each variant (content type, origin, register flag, overrides) is rendered once: a client that calls
``/metadata`` before every session must not make the sandbox rebuild 59 resource entries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import _json
from ._capability import capability_statement
from ._http import Request, Response
from ._render import negotiate, to_xml

__all__ = ["MetadataServer"]

_MAX_CACHED = 256


@dataclass(frozen=True)
class _ClientMetadata:
    register: bool
    oauth_uris: tuple[tuple[str, str], ...]


class MetadataServer:
    """Capability statements per client; ``base_url``/``oauth_url`` are callables (the served port may move)."""

    def __init__(self, base_url: Callable[[], str], oauth_url: Callable[[], str]) -> None:
        self.base_url = base_url
        self.oauth_url = oauth_url
        self._clients: dict[str, _ClientMetadata] = {}
        self._cache: dict[tuple[object, ...], bytes] = {}

    def set_client(self, client_id: str, *, register: bool, oauth_uris: Mapping[str, str] | None) -> None:
        """What ``/metadata`` shows for ``Epic-Client-ID: client_id``."""
        unknown = set(oauth_uris or {}) - {"authorize", "token", "register"}
        if unknown:
            raise ValueError(f"oauth_uris keys must be authorize, token or register, not {sorted(unknown)}")
        self._clients[client_id] = _ClientMetadata(register, tuple(sorted((oauth_uris or {}).items())))

    def respond(self, request: Request) -> Response:
        client_id = request.headers.get("epic-client-id", "").strip() or None
        known = self._clients.get(client_id) if client_id is not None else None
        # An unknown client ID still gets ``register`` (lenient: the sandbox cannot tell who may register).
        register = client_id is not None and (known is None or known.register)
        overrides = known.oauth_uris if known is not None else ()
        ctype = negotiate(request)
        base, oauth = self.base_url(), self.oauth_url()
        key = (ctype, base, oauth, register, overrides)
        body = self._cache.get(key)
        if body is None:
            statement = capability_statement(
                base, oauth, epic_client_id=client_id, register=register, oauth_uris=dict(overrides)
            )
            body = _json.dumps(statement) if "json" in ctype else to_xml(statement)
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = body
        return Response(200, [("content-type", ctype)], body)
