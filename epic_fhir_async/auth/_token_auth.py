"""The httpx auth flow shared by every grant that fetches its own tokens.

Per request it costs a clock read and a header assignment while the token is fresh (no lock, no await on
the fast path). The bearer goes only to the FHIR base's origin (``may_receive_token``). A 401 invalidates
the token *that request carried* and replays the request once with a new one (a token can be revoked or
expire early); a second 401 is returned to the caller, who turns it into
:class:`~epic_fhir_async.Unauthorized`.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import TYPE_CHECKING

import anyio
import httpx

from .._errors import ConfigurationError
from .._urls import is_loopback, redact_url
from ._discovery import SmartEndpoints, check_token_origins, discover_endpoints
from ._epic_auth import EpicAuth
from ._token import AccessToken
from ._token_cache import TokenCache, TokenCacheKey
from ._token_manager import TokenManager

if TYPE_CHECKING:
    from .._http import HTTPSession

__all__ = ["TokenAuth"]

logger = logging.getLogger("epic_fhir_async.auth")


class TokenAuth(EpicAuth):
    """Base of the grants that get tokens from a token endpoint (backend services, secrets, refresh).

    Subclasses implement :meth:`_fetch_token` (one token request). The token URL is ``token_url`` when
    given, else discovered once from the bound FHIR base (smart-configuration, then metadata) and cached; a
    discovered token URL must be on the FHIR base's origin or on one of ``allowed_token_origins``
    (:class:`UnsafeURLError` otherwise: it receives the client's credentials). Tokens are cached per
    (token URL, client id, scope).
    """

    # httpx reads a streamed request body before the flow runs, so the replay after a 401 can resend it.
    requires_request_body = True

    def __init__(
        self,
        client_id: str,
        *,
        token_url: str | None = None,
        scope: str | Iterable[str] | None = None,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        cache: TokenCache | None = None,
        allowed_token_origins: Iterable[str] = (),
    ) -> None:
        if not isinstance(client_id, str) or not client_id.strip():
            raise ConfigurationError(f"{type(self).__name__} needs a non-empty client_id")
        self.client_id = client_id.strip()
        # Parsed once: a web app builds an auth per request (SmartSessions.auth).
        parsed = httpx.URL(token_url) if token_url is not None else None
        if parsed is not None and parsed.scheme not in ("http", "https"):
            raise ConfigurationError("token_url must be an absolute http(s) URL")
        if parsed is not None and parsed.scheme == "http" and not is_loopback(parsed.host):
            # The form carries a client assertion or secret (and answers carry tokens): TLS only, as for the base.
            raise ConfigurationError(
                f"refusing plain http:// for the token URL {redact_url(parsed)}: use https (loopback is allowed)"
            )
        self._token_url = token_url
        self._allowed_token_origins = check_token_origins(allowed_token_origins)
        self.scope = scope if isinstance(scope, str) or scope is None else " ".join(scope)
        self._endpoints: SmartEndpoints | None = None
        self._discovery_lock = anyio.Lock()
        self._clock = clock
        self._wall_clock = wall_clock
        self._succeeded = False
        self._manager = TokenManager(
            self._fetch_and_note, leeway=leeway, clock=clock, cache=cache, cache_key=self._cache_key
        )

    def bind(self, session: HTTPSession) -> None:
        """Bind to the client's HTTP session and FHIR base; a different base forgets discovered endpoints."""
        if self._base_url is not None and str(self._base_url) != str(session.base_url):
            self._endpoints = None
        super().bind(session)

    @property
    def token_url(self) -> str | None:
        """The token endpoint: given, or discovered (``None`` until the first token request)."""
        return self._token_url or (self._endpoints.token_endpoint if self._endpoints else None)

    @property
    def endpoints(self) -> SmartEndpoints | None:
        """What discovery found (``None`` when ``token_url`` was given or nothing was discovered yet)."""
        return self._endpoints

    async def resolve_token_url(self) -> str:
        """The token URL, discovering it from the bound FHIR base the first time."""
        url = self.token_url
        if url is not None:
            return url
        async with self._discovery_lock:
            if self._endpoints is None:
                if self._base_url is None:
                    raise ConfigurationError(
                        f"{type(self).__name__} has no token_url and is not bound to a FHIR base URL to "
                        "discover it from: pass token_url= or use it through EpicFHIRClient(auth=...)"
                    )
                self._endpoints = await discover_endpoints(
                    self.session,
                    self._base_url,
                    client_id=self.client_id,
                    allowed_token_origins=self._allowed_token_origins,
                )
            return self._endpoints.token_endpoint

    async def _cache_key(self) -> TokenCacheKey:
        return TokenCacheKey(await self.resolve_token_url(), self.client_id, self.scope or "")

    async def _fetch_and_note(self) -> AccessToken:
        token = await self._fetch_token()
        self._succeeded = True
        return token

    @property
    def token_manager(self) -> TokenManager:
        """The :class:`TokenManager` behind this auth (``fetches`` counts token requests)."""
        return self._manager

    async def get_token(self) -> AccessToken:
        """The current token, fetched first if needed (the CLI's ``epic-fhir token`` uses this)."""
        return await self._manager.get()

    def secrets(self) -> tuple[str, ...]:
        """The current access token and refresh token (a client secret or assertion is masked where it was
        sent: the token request's own errors)."""
        token = self._manager.current
        if token is None:
            return ()
        return (token.value, token.refresh_token) if token.refresh_token else (token.value,)

    def invalidate(self, token: AccessToken | None = None) -> bool:
        """Forget ``token`` if it is still current; see :meth:`TokenManager.invalidate`."""
        return self._manager.invalidate(token)

    @abstractmethod
    async def _fetch_token(self) -> AccessToken:
        """Make one token request; times on ``self._clock``."""

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self.may_receive_token(request.url):
            # A next link, redirect or file URL of another origin gets no token (SECURITY.md, promise 1).
            request.headers.pop("Authorization", None)
            yield request
            return
        token = await self._manager.get()
        request.headers["Authorization"] = token.authorization
        response = yield request
        if response.status_code != 401:
            return
        # The token may have been revoked or expired early (Epic's tokens are opaque and must not be decoded,
        # docs/epic-notes.md §1.6). Drop it unless another task already did, then replay once.
        if self._manager.invalidate(token):
            logger.debug("401 from %s; refreshing the token once", request.url.host)
        token = await self._manager.get()
        request.headers["Authorization"] = token.authorization
        yield request
