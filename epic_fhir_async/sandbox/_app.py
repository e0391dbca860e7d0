"""The sandbox application: :class:`EpicSandbox`, its ASGI entry, routing, transport and ``serve()``.

Routing follows Epic's layout (epic-behaviour.md §0, checklist 1): ``<root>/api/FHIR/R4/...`` to the FHIR
server, ``<root>/oauth2/...`` to the OAuth server, ``/__sandbox/stats`` for tests, and Epic's IIS HTML 404
for everything else.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import httpx

from ._bulk import BulkExports
from ._clock import SandboxClock
from ._config import SandboxConfig, SandboxFaults
from ._data import Dataset, build_dataset
from ._directory import Directory
from ._faults import FaultInjector
from ._fhir import FhirServer
from ._http import Request, Response, html_404, json_response
from ._introspect import IntrospectionEndpoint
from ._jku import JkuKeys
from ._oauth import OAuthServer
from ._scopes import ScopeStyle
from ._smart import SmartServer
from ._smart_api import SmartLaunchMixin

__all__ = ["ConnectionDropped", "EpicSandbox"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

STATS_PATH = "/__sandbox/stats"


class ConnectionDropped(Exception):
    """Raised by the in-process app when a fault cuts a response; the transport turns it into httpx's error."""


class _DroppingASGITransport(httpx.ASGITransport):
    """httpx's ASGI transport, turning an injected dropped connection into ``httpx.RemoteProtocolError``."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except ConnectionDropped:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body", request=request
            ) from None


def _copy_dataset(source: Dataset) -> Dataset:
    """A per-sandbox copy (``build_dataset`` caches and shares its result; writes must not leak)."""
    return Dataset(
        resources={t: dict(v) for t, v in source.resources.items()},
        by_patient={t: {p: list(ids) for p, ids in v.items()} for t, v in source.by_patient.items()},
        binaries=dict(source.binaries),
        patient_ids=list(source.patient_ids),
        group_id=source.group_id,
    )


class EpicSandbox(SmartLaunchMixin):
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
        self._origin = config.origin.rstrip("/")
        self.dataset = _copy_dataset(build_dataset(config.seed, config.patients))
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
        self.oauth.add_route("introspect", IntrospectionEndpoint(self.oauth, lambda: self.oauth_url))
        self.fhir = FhirServer(
            dataset=self.dataset,
            oauth=self.oauth,
            bulk=self.bulk,
            base_url=lambda: self.base_url,
            oauth_url=lambda: self.oauth_url,
            clock=self.clock,
            stats=self.stats,
            page_size=config.page_size,
            max_page_size=config.max_page_size,
            session_ttl=config.session_ttl,
            seed=config.seed,
            warn_unknown=config.unknown_params == "warn",
        )
        self._injector = FaultInjector(self.faults, clock=self.clock, stats=self.stats, seed=config.seed)
        self._fhir_prefix = config.root_path + "/api/FHIR/R4"
        # SMART App Launch (issue 7): /oauth2/authorize, code/refresh grants, id_tokens, OIDC discovery.
        self._smart = SmartServer(
            oauth=self.oauth,
            dataset=self.dataset,
            clock=self.clock,
            stats=self.stats,
            origin=lambda: self._origin,
            root_path=config.root_path,
        )
        self._oauth_prefix = config.root_path + "/oauth2"

    # -- URLs -------------------------------------------------------------------------------------------
    @property
    def origin(self) -> str:
        """Scheme, host and port every absolute URL uses (follows the real port when served)."""
        return self._origin

    @origin.setter
    def origin(self, value: str) -> None:
        self._origin = value.rstrip("/")
        self.oauth.token_url = self.token_url
        self.bulk.base_url = self.base_url

    @property
    def base_url(self) -> str:
        return f"{self._origin}{self.config.root_path}/api/FHIR/R4"

    @property
    def oauth_url(self) -> str:
        return f"{self._origin}{self.config.root_path}/oauth2"

    @property
    def token_url(self) -> str:
        return f"{self.oauth_url}/token"

    @property
    def app(self) -> EpicSandbox:
        """The ASGI application (the sandbox object itself)."""
        return self

    # -- clients, tokens, sessions ------------------------------------------------------------------------
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

        See :meth:`OAuthServer.register_client <._oauth.OAuthServer.register_client>` for ``jku``, ``static``,
        ``sync_delay``, ``user_mapped``, ``scope_style`` and ``environment``. ``dynamic_registration=False``
        hides ``register`` from ``/metadata`` for this client's ``Epic-Client-ID``; ``oauth_uris`` (e.g.
        ``{"token": url}``) overrides its oauth-uris there (customers that override the iss per client, §2.1).
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
        """Add Incoming APIs to a registered client; 403 (and 59204) until ``sync_delay`` has passed (§5)."""
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
            return json_response(self.stats_snapshot(), content_type="application/json; charset=utf-8")
        smart_route = self._smart.paths.get(path)  # OIDC keys, FHIR-base openid-configuration, style
        if smart_route is not None and request.method == "GET":
            return smart_route(request)
        if path.startswith(self._oauth_prefix + "/"):
            if self.faults.latency > 0:
                self.stats["faults:latency"] += 1
                await anyio.sleep(self.faults.latency)
            self.oauth.token_flake_rate = self.faults.token_flake_rate
            subpath = path[len(self._oauth_prefix) + 1 :]
            if subpath.strip("/") == "token":
                await self.oauth.jku.prepare(request)  # may fetch a JWK Set URL (async); verification is sync
            return self.oauth.handle(request, subpath)
        directory = self.directory.handle(path, request.method, origin=self._origin, base_url=self.base_url)
        if directory is not None:
            return directory
        if path == self._fhir_prefix or path.startswith(self._fhir_prefix + "/"):
            self.stats["fhir_requests"] += 1
            if path.startswith(self._fhir_prefix + "/BulkRequest"):
                self.stats["bulk_requests"] += 1
            fault = self._injector.before()
            if fault is not None:
                return fault
            if self.faults.latency > 0:
                self.stats["faults:latency"] += 1
                await anyio.sleep(self.faults.latency)
            spike = self._injector.spike()
            if spike:
                await anyio.sleep(spike)
            response = self.fhir.handle(request, path[len(self._fhir_prefix) :].lstrip("/"))
            self._injector.after(response)
            return response
        return html_404()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._asgi(scope, receive, send, served=False)

    async def _asgi(self, scope: Scope, receive: Receive, send: Send, *, served: bool) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        request = Request.from_scope(scope, b"".join(chunks))
        response = await self.handle(request)
        self.stats[f"status:{response.status}"] += 1
        try:
            await self._send_response(response, send, served)
        finally:
            # Close a streamed body's generator now, whatever happened (a fault cut, a client gone, a
            # cancellation): never leave it to the garbage collector.
            aclose = getattr(response.stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _send_response(self, response: Response, send: Send, served: bool) -> None:
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if response.stream is None:
            headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if response.stream is None:
            if response.drop_after:
                cut = response.body[: response.drop_after]
                await send({"type": "http.response.body", "body": cut, "more_body": True})
                await self._drop(served)
                return
            await send({"type": "http.response.body", "body": response.body})
            return
        if await self._send_stream(response, send, served):
            await send({"type": "http.response.body", "body": b""})

    async def _send_stream(self, response: Response, send: Send, served: bool) -> bool:
        """Send a streamed body; False when a fault cut it (the response must not be completed)."""
        assert response.stream is not None
        sent = 0
        async for chunk in response.stream:
            if response.drop_after and sent + len(chunk) >= response.drop_after:
                part = chunk[: response.drop_after - sent]
                await send({"type": "http.response.body", "body": part, "more_body": True})
                await self._drop(served)
                return False
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if response.drop_after:
            await self._drop(served)
            return False
        return True

    @staticmethod
    async def _drop(served: bool) -> None:
        # Served: returning without completing the response makes uvicorn close the socket mid-body.
        # In-process: raise, and the transport turns it into httpx.RemoteProtocolError.
        if not served:
            raise ConnectionDropped("response cut by fault injection")

    # -- running ------------------------------------------------------------------------------------------
    def transport(self) -> httpx.AsyncBaseTransport:
        """An in-process httpx transport (no sockets; works on asyncio and trio)."""
        return _DroppingASGITransport(app=self)

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run a real uvicorn server on ``host:port`` (0 = any free port); yields the FHIR base URL.

        The origin follows the real port while serving. Under trio, uvicorn (asyncio-only) runs in a worker
        thread with its own event loop.
        """
        import sniffio
        import uvicorn  # the "sandbox" extra

        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        real_port = sock.getsockname()[1]

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self._asgi(scope, receive, send, served=True)

        config = uvicorn.Config(app, log_level="critical", lifespan="off", access_log=False, log_config=None)
        server = uvicorn.Server(config)
        previous = self._origin
        # A wildcard bind is reached through loopback; URLs must name an address clients can use.
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}  # noqa: S104 - mapping a wildcard away, not binding
        shown_host = wildcard.get(host, f"[{host}]" if ":" in host else host)
        self.origin = f"http://{shown_host}:{real_port}"
        try:
            async with anyio.create_task_group() as tg:

                async def run_server() -> None:
                    if sniffio.current_async_library() == "asyncio":
                        await server.serve([sock])
                    else:
                        await anyio.to_thread.run_sync(lambda: server.run([sock]))
                    # The server stopped (Ctrl-C under the CLI): end the caller's block too.
                    tg.cancel_scope.cancel()

                tg.start_soon(run_server)
                while not server.started:
                    if server.should_exit:
                        raise RuntimeError("the sandbox server failed to start")
                    await anyio.sleep(0.01)
                try:
                    yield self.base_url
                finally:
                    server.should_exit = True
        finally:
            sock.close()
            self.origin = previous
