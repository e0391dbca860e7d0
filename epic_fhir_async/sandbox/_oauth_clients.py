"""The sandbox's client registry: Epic's app registrations as its token endpoint and bearer checks see them.

Reproduces docs/epic-notes.md §1.1, §1.5, §2.8 and §5.2: a backend client is
registered by public JWK Set, by Epic's static key upload (one RSA key) or by JWK Set URL (:mod:`._jku`); a
client ID belongs to one environment (non-production or production) and the other refuses it; keys work only
after Epic's sync delay, and Incoming APIs (resource types) added later answer 403 until they sync; a backend
user that is not mapped gets ``unauthorized_client``; the token response's ``scope`` follows the style the
app registration picked. SMART apps (:mod:`._smart`) record their resource types here too, so their tokens
pass the same bearer checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import KeySet

from ._clock import SandboxClock
from ._jku import JkuKeys
from ._jwt import AssertionRejected, load_public_jwks, load_static_jwks
from ._scopes import SCOPE_STYLES, ScopeStyle, scope_string

__all__ = ["BackendClient", "ClientRegistry"]

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


@dataclass
class BackendClient:
    """A registered backend (SMART Backend Services) client."""

    client_id: str
    keys: KeySet
    resource_types: frozenset[str] | None
    active_from: float  # sandbox time when the key "syncs" (Epic's key sync delay, docs/epic-notes.md §5.2)
    user_mapped: bool
    scope_style: ScopeStyle = "v1"
    environment: str = "non-production"
    # APIs added after registration: (sandbox time they sync, types); 403 until then, as at Epic
    # (docs/epic-notes.md §5.2).
    pending: list[tuple[float, frozenset[str]]] = field(default_factory=list)


class ClientRegistry:
    """Backend clients and SMART apps known to one OAuth server (the base of :class:`._oauth.OAuthServer`)."""

    def __init__(self, *, clock: SandboxClock, environment: str, jku: JkuKeys) -> None:
        self.clock = clock
        #: "non-production" (Epic's sandbox) or "production": clients registered for the other one are refused.
        self.environment = environment
        #: Clients registered by JWK Set URL and their cached keys (docs/epic-notes.md §1.5).
        self.jku = jku
        self._clients: dict[str, BackendClient] = {}
        self._app_types: dict[str, frozenset[str] | None] = {}

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
        ``static=True`` is Epic's static key upload (docs/epic-notes.md §1.5: one RSA key, only kty/e/n kept,
        ``kid`` ignored, no ES256/ES384); ``jku`` is fetched and cached as Epic does (see :mod:`._jku`).
        ``resource_types``: ``"Observation"`` (whole type) or ``"Observation?category=laboratory"`` (a
        sub-type); None allows everything. ``sync_delay`` seconds of sandbox time pass before the keys work
        (Epic's sync delay: ``invalid_client`` until then); ``user_mapped=False`` gives
        ``unauthorized_client`` (docs/epic-notes.md §1.1). ``scope_style``: "v1", "v2" or "epic" (the token
        response's ``scope``, §2.8). ``environment``: the environment this client ID belongs to (default: this
        server's); Epic refuses a production ID in the sandbox and vice versa with ``invalid_client``
        (docs/epic-notes.md §1.1, §5.2). Raises ValueError for a JWKS with private parts or unsupported keys.
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
        self._clients[client_id] = BackendClient(
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
        """Add Incoming APIs to a registered client; until ``sync_delay`` has passed they answer 403.

        Epic's sync delay for newly added APIs (docs/epic-notes.md §5.2).
        """
        client = self._clients[client_id]
        client.pending.append((self.clock.now() + sync_delay, frozenset(resource_types)))

    def register_app(self, client_id: str, *, resource_types: Iterable[str] | None = None) -> None:
        """Let a SMART app's access tokens pass the bearer checks (same resource-type rules as a backend)."""
        self._app_types[client_id] = None if resource_types is None else frozenset(resource_types)

    def knows(self, client_id: str) -> bool:
        """Whether ``client_id`` is a registered backend client or SMART app."""
        return client_id in self._clients or client_id in self._app_types

    def backend_client(self, client_id: str) -> BackendClient | None:
        return self._clients.get(client_id)

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

    def scope(self, client: BackendClient) -> str:
        """The ``scope`` of a token for ``client``: its synced types, in its registration's style.

        Epic's scope styles: docs/epic-notes.md §2.8.
        """
        types = self.allowed_types(client.client_id)
        return scope_string(_DEFAULT_SCOPE_TYPES if types is None else types, client.scope_style)

    def keys_for(self, client_id: str) -> KeySet:
        """The keys that may sign ``client_id``'s assertions now; :class:`AssertionRejected` if none may."""
        client = self._clients.get(client_id)
        if client is None:
            raise AssertionRejected("unknown_client")
        if client.environment != self.environment:
            # A non-production ID at production, or vice versa (docs/epic-notes.md §1.1).
            raise AssertionRejected("wrong_environment")
        if self.clock.now() < client.active_from:
            raise AssertionRejected("not_synced")
        if self.jku.url_for(client_id) is not None:
            return self.jku.keys(client_id)
        return client.keys
