"""SMART App Launch (EHR launch and standalone) against one FHIR server: authorize URL, callback, tokens.

    launch = SmartLaunch(base_url, client_id=..., redirect_uri=..., scopes="openid fhirUser patient/*.read")
    request = await launch.begin(launch=launch_param, iss=iss)   # EHR launch; begin() alone: standalone
    session["smart"] = request.to_dict()                         # then redirect the browser to request.url
    ...
    tokens = await launch.complete(session.pop("smart"), request_url_of_the_callback)
    client = EpicFHIRClient(tokens.fhir_base, auth=launch.auth(tokens), http_client=shared_http)

Epic's rules are in :mod:`._smart_request` (URL), :mod:`._smart_tokens` (context), :mod:`._id_token`
(id_token) and :mod:`._smart_auth` (refresh). Endpoints come from ``.well-known/smart-configuration`` (then
``/metadata``), never from editing the base URL (docs/epic-notes.md §2.1).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import httpx

from .._config import DEFAULT_TIMEOUT
from .._errors import CodeExchangeError, ConfigurationError, TokenRequestError, UntrustedIssuer
from .._http import HTTPSession
from .._urls import redact_url, same_origin
from ._client_auth import ClientAuthentication, client_authentication
from ._discovery import SmartEndpoints, absolute_url, discover_endpoints
from ._id_token import IdTokenVerifier
from ._keys import KeySource
from ._smart_auth import RefreshCallback, SmartAuth
from ._smart_request import (
    AuthorizationRequest,
    check_callback,
    code_challenge,
    new_code_verifier,
    normalise_scopes,
    parse_callback,
)
from ._smart_tokens import SmartTokenSet
from ._token_request import post_token_request

__all__ = ["SmartLaunch"]

#: Parameters the launch sets itself; ``extra_params`` may not override them.
_RESERVED = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "aud",
        "code_challenge",
        "code_challenge_method",
        "launch",
        "nonce",
    }
)
_EXCHANGE_HINT = (
    "the authorization code was refused: codes are single-use and live a few minutes, and the redirect_uri "
    "and PKCE code_verifier must be those of the same authorization request. Start a new launch."
)


def _issuer_key(url: str) -> tuple[str, str | None, int | None, str]:
    u = httpx.URL(url.strip())
    port = u.port if u.port is not None else {"http": 80, "https": 443}.get(u.scheme)
    return (u.scheme.lower(), u.host.lower() if u.host else None, port, u.path.rstrip("/"))


class SmartLaunch:
    """A SMART app's launches against the FHIR server at ``base_url`` (one instance per server, app-wide).

    ``scopes``: the scopes to request, in SMART v1 (``patient/Observation.read``), v2
    (``patient/Observation.rs``) or Epic's legacy form, plus ``openid fhirUser``, ``launch/patient``,
    ``offline_access`` as needed. ``launch`` is added for EHR launches and removed for standalone ones.
    Client authentication: ``client_secret`` (``client_secret_basic`` by default), ``private_key``
    (``private_key_jwt``), or neither (a public client). ``http_client`` carries discovery and token
    requests (share the app's; when omitted the launch makes its own: close it with :meth:`aclose`).
    ``authorization_endpoint``/``token_url`` skip discovery; ``id_token_issuer``/``jwks_uri`` skip OpenID
    discovery. ``max_age``: seconds a started launch stays completable. ``wall_clock``: epoch seconds.
    """

    def __init__(
        self,
        base_url: str | httpx.URL,
        *,
        client_id: str,
        redirect_uri: str,
        scopes: str | Iterable[str] = ("openid", "fhirUser"),
        client_secret: str | None = None,
        secret_method: str = "client_secret_basic",  # noqa: S107 (a method name)
        private_key: KeySource | Sequence[KeySource] | None = None,
        algorithm: str | None = None,
        key_id: str | None = None,
        jku: str | None = None,
        password: str | bytes | None = None,
        http_client: httpx.AsyncClient | None = None,
        authorization_endpoint: str | None = None,
        token_url: str | None = None,
        id_token_issuer: str | None = None,
        jwks_uri: str | None = None,
        verify_id_token: bool = True,
        max_age: float | None = 600.0,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        base = str(base_url).rstrip("/")
        url = httpx.URL(base)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError("base_url must be the absolute http(s) URL of the FHIR R4 base")
        if not isinstance(client_id, str) or not client_id.strip():
            raise ConfigurationError("SmartLaunch needs a non-empty client_id")
        redirect = httpx.URL(redirect_uri) if isinstance(redirect_uri, str) else None
        if redirect is None or redirect.scheme not in ("http", "https") or redirect.fragment:
            raise ConfigurationError(
                "redirect_uri must be an absolute http(s) URL without a fragment, exactly as registered with "
                "Epic (Epic compares it character for character, docs/epic-notes.md §2.2)"
            )
        self.base_url = base
        self.client_id = client_id.strip()
        self.redirect_uri = redirect_uri
        self.scopes = normalise_scopes(scopes)
        self._client_auth: ClientAuthentication = client_authentication(
            self.client_id,
            client_secret=client_secret,
            secret_method=secret_method,
            private_key=private_key,
            algorithm=algorithm,
            key_id=key_id,
            jku=jku,
            password=password,
            wall_clock=wall_clock,
        )
        self._session = HTTPSession(url, http_client=http_client, timeout=DEFAULT_TIMEOUT)
        self._fixed = self._fixed_endpoints(authorization_endpoint, token_url, url)
        self._endpoints: SmartEndpoints | None = self._fixed
        self._lock = anyio.Lock()
        self.verify_id_token = verify_id_token
        self._verifier = IdTokenVerifier(
            issuer=id_token_issuer, jwks_uri=jwks_uri, leeway=leeway, wall_clock=wall_clock
        )
        self.max_age = max_age
        self.leeway = leeway
        self._clock = clock
        self._wall_clock = wall_clock

    @staticmethod
    def _fixed_endpoints(authorize: str | None, token: str | None, base: httpx.URL) -> SmartEndpoints | None:
        if authorize is None and token is None:
            return None
        a, t = absolute_url(authorize, base), absolute_url(token, base)
        if a is None or t is None:
            raise ConfigurationError(
                "give both authorization_endpoint and token_url as absolute http(s) URLs (https when the "
                "FHIR base is https), or neither to discover them"
            )
        return SmartEndpoints(token_endpoint=t, authorization_endpoint=a, source="configured")

    def __repr__(self) -> str:
        return (
            f"SmartLaunch({redact_url(self.base_url)!r}, client_id={self.client_id!r}, "
            f"client_auth={type(self._client_auth).__name__})"
        )

    async def __aenter__(self) -> SmartLaunch:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client the launch made itself (a caller's client stays open)."""
        await self._session.aclose()

    @property
    def http_client(self) -> httpx.AsyncClient:
        return self._session.http

    @property
    def id_token_verifier(self) -> IdTokenVerifier:
        """The id_token verifier (its ``jwks_fetches`` counts key downloads)."""
        return self._verifier

    def matches_issuer(self, iss: str) -> bool:
        """Whether ``iss`` (from an EHR launch) names this launch's FHIR base (scheme, host, port, path)."""
        try:
            return _issuer_key(iss) == _issuer_key(self.base_url)
        except (httpx.InvalidURL, TypeError, AttributeError):
            return False

    async def endpoints(self) -> SmartEndpoints:
        """The authorize and token endpoints, discovered once (smart-configuration, then metadata)."""
        if self._endpoints is not None:
            return self._endpoints
        async with self._lock:
            if self._endpoints is None:
                found = await discover_endpoints(self._session, self.base_url, client_id=self.client_id)
                if found.authorization_endpoint is None:
                    raise ConfigurationError(
                        f"{redact_url(self.base_url)} names no authorization endpoint; pass "
                        "authorization_endpoint= and token_url="
                    )
                self._endpoints = found
            return self._endpoints

    def _scopes_for(self, launch: str | None, extra: str | Iterable[str] | None) -> tuple[str, ...]:
        scopes = normalise_scopes((*self.scopes, *normalise_scopes(extra)))
        if launch is not None:
            # EHR launch: without the launch scope Epic prompts for a login instead of using the context.
            return scopes if "launch" in scopes else ("launch", *scopes)
        # Standalone: no bare launch scope for Epic (docs/epic-notes.md §2.2); launch/patient etc. stay.
        return tuple(s for s in scopes if s != "launch")

    async def begin(
        self,
        *,
        launch: str | None = None,
        iss: str | None = None,
        scopes: str | Iterable[str] | None = None,
        extra_params: Mapping[str, str] | None = None,
    ) -> AuthorizationRequest:
        """Start a launch: an :class:`AuthorizationRequest` whose ``url`` the browser must be sent to.

        EHR launch: pass the ``launch`` and ``iss`` query parameters the EHR opened ``/launch`` with; an
        ``iss`` that is not this launch's FHIR base raises :class:`UntrustedIssuer` (never follow an
        ``iss`` blindly). Standalone: neither. ``scopes`` adds to the configured ones for this launch.
        """
        if iss is not None and not self.matches_issuer(iss):
            raise UntrustedIssuer(
                f"the EHR launch names iss={redact_url(iss)!s}, not the configured FHIR base "
                f"{redact_url(self.base_url)}: refusing it (configure a SmartLaunch per trusted server)"
            )
        if launch is not None and (not isinstance(launch, str) or not launch.strip()):
            raise ConfigurationError("launch must be the non-empty launch value the EHR sent")
        endpoints = await self.endpoints()
        assert endpoints.authorization_endpoint is not None  # checked by endpoints()
        wanted = self._scopes_for(launch, scopes)
        state = secrets.token_urlsafe(32)  # 256 bits; Epic asks for at least 122 (docs/epic-notes.md §2.2)
        verifier = new_code_verifier()
        nonce = secrets.token_urlsafe(32) if "openid" in wanted else None
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(wanted),
            "state": state,
            "aud": self.base_url,  # always (Epic needs it with launch scopes, docs/epic-notes.md §2.2)
            "code_challenge": code_challenge(verifier),
            "code_challenge_method": "S256",  # never plain: Epic does not support it
        }
        if launch is not None:
            params["launch"] = launch.strip()
        if nonce is not None:
            params["nonce"] = nonce
        for key, value in (extra_params or {}).items():
            if key in _RESERVED:
                raise ConfigurationError(f"extra_params may not set {key!r}: the launch sets it itself")
            params[key] = value
        endpoint = endpoints.authorization_endpoint
        separator = "&" if "?" in endpoint else "?"
        return AuthorizationRequest(
            url=endpoint + separator + urlencode(params, quote_via=quote),
            authorization_endpoint=endpoint,
            state=state,
            code_verifier=verifier,
            redirect_uri=self.redirect_uri,
            client_id=self.client_id,
            fhir_base=self.base_url,
            scopes=wanted,
            nonce=nonce,
            launch=params.get("launch"),
            created_at=self._wall_clock(),
        )

    async def complete(
        self,
        request: AuthorizationRequest | Mapping[str, Any],
        callback: str | httpx.URL | Mapping[str, Any],
    ) -> SmartTokenSet:
        """Finish a launch: check the callback, exchange the code, verify the id_token.

        ``request`` is what :meth:`begin` returned (or its :meth:`~AuthorizationRequest.to_dict`); remove it
        from the session first, it is single-use. ``callback`` is the callback's full URL or its query
        parameters. Raises :class:`LaunchStateError` (state), :class:`AuthorizationDenied` (``error=``),
        :class:`CodeExchangeError` (the token endpoint said no) or :class:`IdTokenError`.
        """
        if not isinstance(request, AuthorizationRequest):
            request = AuthorizationRequest.from_dict(request)
        if request.client_id != self.client_id or request.fhir_base != self.base_url:
            raise ConfigurationError("this authorization request was started by another SmartLaunch")
        code = check_callback(
            request, parse_callback(callback), max_age=self.max_age, wall_clock=self._wall_clock()
        )
        endpoints = await self.endpoints()
        grant = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": request.redirect_uri,
            "code_verifier": request.code_verifier,
        }
        issued_at = self._wall_clock()
        try:
            token = await post_token_request(
                self._session,
                endpoints.token_endpoint,
                grant=grant,
                client_auth=self._client_auth,
                clock=self._clock,
                wall_clock=self._wall_clock,
            )
        except TokenRequestError as exc:
            hint = _EXCHANGE_HINT if exc.error == "invalid_grant" else exc.hint
            raise CodeExchangeError(
                str(exc.args[0]) if exc.args else "the code exchange failed",
                error=exc.error,
                error_description=exc.error_description,
                hint=hint,
                status_code=exc.status_code,
            ) from exc
        claims = None
        id_token = token.extra.get("id_token")
        if isinstance(id_token, str) and id_token and self.verify_id_token:
            claims = await self._verifier.verify(
                self._session,
                id_token,
                client_id=self.client_id,
                nonce=request.nonce,
                fhir_base=self.base_url,
                endpoints=endpoints,
            )
        return SmartTokenSet.from_token(
            token,
            client_id=self.client_id,
            token_url=endpoints.token_endpoint,
            fhir_base=self.base_url,
            issued_at=issued_at,
            id_token_claims=claims,
        )

    def auth(self, token_set: SmartTokenSet, *, on_refresh: RefreshCallback | None = None) -> SmartAuth:
        """A :class:`SmartAuth` for ``token_set`` with this launch's client authentication."""
        if token_set.client_id != self.client_id or not same_origin(
            httpx.URL(token_set.fhir_base), httpx.URL(self.base_url)
        ):
            raise ConfigurationError("this token set belongs to another client or FHIR server")
        return SmartAuth(token_set, on_refresh=on_refresh, **self._auth_options())

    def _auth_options(self) -> dict[str, Any]:
        """What a :class:`SmartAuth` of this launch is built with: its client authentication, leeway, clocks."""
        return {
            "client_auth": self._client_auth,
            "leeway": self.leeway,
            "clock": self._clock,
            "wall_clock": self._wall_clock,
        }
