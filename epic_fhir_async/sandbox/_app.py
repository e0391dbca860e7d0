"""The sandbox application: :class:`EpicSandbox`, its parts, its public test API and its routing.

Routing follows Epic's layout (docs/epic-notes.md §0): ``<root>/api/FHIR/R4/...`` to the FHIR
server, ``<root>/oauth2/...`` to the OAuth server, Epic's OIDC key and style paths to SMART, the public
endpoint directory, ``/__sandbox/stats`` for tests, and Epic's IIS HTML 404 for everything else. Faults
apply to FHIR requests; latency also to OAuth. The ASGI entry, the in-process transport
and ``serve()`` live in :mod:`._asgi`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import anyio
import httpx

from ._asgi import AsgiServer, ConnectionDropped
from ._bulk import BulkExports
from ._clock import SandboxClock
from ._config import SandboxConfig, SandboxFaults
from ._data import build_dataset
from ._directory import Directory
from ._faults import FaultInjector
from ._fhir import FhirServer
from ._http import JSON_UTF8, Request, Response, html_404, json_response
from ._introspect import IntrospectionEndpoint
from ._jku import JkuKeys
from ._oauth import OAuthServer
from ._scopes import ScopeStyle
from ._smart import SmartServer
from ._smart_api import SmartLaunchMixin
from ._urls import FHIR_PATH, SandboxUrls

__all__ = ["ConnectionDropped", "EpicSandbox"]

STATS_PATH = "/__sandbox/stats"


class EpicSandbox(SmartLaunchMixin, AsgiServer):
    """An emulator of Epic's FHIR R4 and OAuth 2.0 servers (see docs/sandbox.md).

    ``EpicSandbox(SandboxConfig(...))`` or ``EpicSandbox(seed=0, patients=10, ...)``; ``clock`` defaults to
    real time (tests pass ``SandboxClock(frozen_at=...)`` and call ``sb.clock.advance(s)``).
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        clock: SandboxClock | None = None,
        jku_transport: httpx.AsyncBaseTransport | None = None,
        **overrides: Any,
    ) -> None:
        config = replace(config, **overrides) if config is not None else SandboxConfig(**overrides)
        self.config = config
        self.clock = clock or SandboxClock()
        self.stats: collections.Counter[str] = collections.Counter()
        self.faults: SandboxFaults = config.faults()
        self.urls = SandboxUrls(config.origin, config.root_path)
        self.dataset = build_dataset(config.seed, config.patients).copy()
        self.oauth = OAuthServer(
            token_url=self.token_url,
            clock=self.clock,
            stats=self.stats,
            token_lifetime=config.token_lifetime,
            seed=config.seed,
            environment=config.environment,
            audiences=config.token_audiences,
            # jku_transport: tests serve JWK Sets in-process (httpx.MockTransport) and count the fetches.
            jku=JkuKeys(
                clock=self.clock, stats=self.stats, max_cache=config.jku_max_cache, transport=jku_transport
            ),
        )
        self.bulk = BulkExports(
            dataset=self.dataset,
            base_url=self.base_url,
            clock=self.clock,
            stats=self.stats,
            export_seconds=config.export_seconds,
            cooldown_seconds=config.export_cooldown,
            seed=config.seed,
            resources_per_file=config.export_resources_per_file,
            retention_seconds=config.export_retention,
            since=config.export_since,
            type_filter=config.export_type_filter,
            allow_post=config.export_allow_post,
            too_recent_status=config.export_too_recent_status,
            progress_headers=config.export_progress_headers,
            synthetic_observations=config.export_synthetic_observations,
            allowed_types=self.oauth.allowed_types,
        )
        self.directory = Directory(config.directory)
        self.oauth.add_route("introspect", IntrospectionEndpoint(self.oauth, lambda: self.urls.oauth))
        self.fhir = FhirServer(
            dataset=self.dataset,
            oauth=self.oauth,
            bulk=self.bulk,
            base_url=lambda: self.urls.fhir_base,
            oauth_url=lambda: self.urls.oauth,
            clock=self.clock,
            stats=self.stats,
            page_size=config.page_size,
            max_page_size=config.max_page_size,
            session_ttl=config.session_ttl,
            seed=config.seed,
            warn_unknown=config.unknown_params == "warn",
            outside_records=config.outside_records,
        )
        self._injector = FaultInjector(self.faults, clock=self.clock, stats=self.stats, seed=config.seed)
        self._fhir_prefix = config.root_path + FHIR_PATH
        # SMART App Launch (docs/epic-notes.md §2): /oauth2/authorize, code/refresh grants, id_tokens, OIDC
        # discovery.
        self._smart = SmartServer(
            oauth=self.oauth, dataset=self.dataset, clock=self.clock, stats=self.stats, urls=self.urls
        )
        self._oauth_prefix = config.root_path + "/oauth2"

    # -- URLs (all from self.urls; see ._urls) ------------------------------------------------------------
    @property
    def origin(self) -> str:
        """Scheme, host and port every absolute URL uses (follows the real port when served)."""
        return self.urls.origin

    @origin.setter
    def origin(self, value: str) -> None:
        self.urls.origin = value.rstrip("/")
        self.oauth.token_url = self.token_url
        self.bulk.base_url = self.base_url

    @property
    def base_url(self) -> str:
        """The FHIR R4 base, ``<root>/api/FHIR/R4``."""
        return self.urls.fhir_base

    @property
    def oauth_url(self) -> str:
        """``<root>/oauth2``."""
        return self.urls.oauth

    @property
    def token_url(self) -> str:
        """``<root>/oauth2/token``."""
        return self.urls.token

    @property
    def authorize_url(self) -> str:
        """``<root>/oauth2/authorize``."""
        return self.urls.authorize

    @property
    def openid_configuration_url(self) -> str:
        """``<root>/oauth2/.well-known/openid-configuration`` (the id_token issuer's discovery document)."""
        return self.urls.openid_configuration

    @property
    def jwks_url(self) -> str:
        """Epic's OIDC key URL, ``<root>/api/epic/2019/Security/Open/PublicKeys/530005/OIDC``."""
        return self.urls.jwks

    @property
    def app(self) -> EpicSandbox:
        """The ASGI application (the sandbox object itself)."""
        return self

    # -- clients, tokens, sessions ------------------------------------------------------------------------
    # The keywords are spelled out (not **kwargs) so help() and type checkers show every option.
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
        dynamic_registration: bool = True,
        oauth_uris: Mapping[str, str] | None = None,
    ) -> None:
        """Register a backend client by public JWKS (or ``jku`` URL); ``resource_types`` None allows every type.

        See :meth:`OAuthServer.register_client <._oauth_clients.ClientRegistry.register_client>` for ``jku``,
        ``static``, ``sync_delay``, ``user_mapped``, ``scope_style`` and ``environment``.
        ``dynamic_registration=False`` hides ``register`` from ``/metadata`` for this client's
        ``Epic-Client-ID``; ``oauth_uris`` (e.g. ``{"token": url}``) overrides its oauth-uris there (customers
        that override the iss per client, docs/epic-notes.md §2.1).
        """
        self.oauth.register_client(
            client_id,
            jwks,
            jku=jku,
            static=static,
            resource_types=resource_types,
            sync_delay=sync_delay,
            user_mapped=user_mapped,
            scope_style=scope_style,
            environment=environment,
        )
        self.fhir.set_client_metadata(client_id, register=dynamic_registration, oauth_uris=oauth_uris)

    def add_resource_types(
        self, client_id: str, resource_types: Iterable[str], *, sync_delay: float = 0.0
    ) -> None:
        """Add Incoming APIs to a registered client; 403 (and 59204) until ``sync_delay`` has passed.

        Epic's sync delay for newly added APIs (docs/epic-notes.md §5.2).
        """
        self.oauth.add_resource_types(client_id, resource_types, sync_delay=sync_delay)

    def issue_token(self, client_id: str = "sandbox-test-client", lifetime: float | None = None) -> str:
        """Test helper: a bearer token without the JWT dance (registers an unknown ``client_id`` for all types)."""
        try:
            return self.oauth.issue_token(client_id, lifetime)
        except KeyError:
            # An unknown client gets a throwaway public key: it can use tokens but never sign assertions.
            from joserfc.jwk import ECKey

            jwk = ECKey.generate_key("P-256").as_dict(private=False)
            self.oauth.register_client(client_id, {"keys": [{**jwk, "kid": "sandbox-test"}]})
            return self.oauth.issue_token(client_id, lifetime)

    def expire_sessions(self) -> None:
        """Force every paging session to expire (their next links then answer 4113)."""
        self.fhir.pager.expire_all()

    def stats_snapshot(self) -> dict[str, int]:
        return dict(sorted(self.stats.items()))

    # -- request handling ---------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        """Route one request; faults apply to FHIR requests (latency also to OAuth)."""
        path = request.path
        if path == STATS_PATH:
            return json_response(self.stats_snapshot(), content_type=JSON_UTF8)
        smart_route = self._smart.paths.get(path)  # OIDC keys, FHIR-base openid-configuration, style
        if smart_route is not None and request.method == "GET":
            return smart_route(request)
        if path.startswith(self._oauth_prefix + "/"):
            await self._latency()
            self.oauth.token_flake_rate = self.faults.token_flake_rate
            subpath = path[len(self._oauth_prefix) + 1 :]
            if subpath.strip("/") == "token":
                await self.oauth.jku.prepare(request)  # may fetch a JWK Set URL (async); verification is sync
            return self.oauth.handle(request, subpath)
        directory = self.directory.handle(path, request.method, origin=self.origin, base_url=self.base_url)
        if directory is not None:
            return directory
        if path == self._fhir_prefix or path.startswith(self._fhir_prefix + "/"):
            self.stats["fhir_requests"] += 1
            if path.startswith(self._fhir_prefix + "/BulkRequest"):
                self.stats["bulk_requests"] += 1
            fault = self._injector.before()
            if fault is not None:
                return fault
            await self._latency()
            spike = self._injector.spike()
            if spike:
                await anyio.sleep(spike)
            response = self.fhir.handle(request, path[len(self._fhir_prefix) :].lstrip("/"))
            self._injector.after(response)
            return response
        return html_404()

    async def _latency(self) -> None:
        if self.faults.latency > 0:
            self.stats["faults:latency"] += 1
            await anyio.sleep(self.faults.latency)
