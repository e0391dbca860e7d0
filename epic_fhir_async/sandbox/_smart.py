"""SMART App Launch in the sandbox: app registry, EHR launch tokens, ``/oauth2/authorize`` and the test login.

Reproduces docs/epic-notes.md §2.1 and §2.2: exact ``redirect_uri`` match, ``aud`` = the FHIR base, PKCE S256
only, ``launch`` tokens for EHR launches, POST only with ``launch``, codes as long JWT-like strings and
``state`` echoed. Every authorize failure is Epic's HTML error page (400), never a redirect; only a user's
refusal (``deny_next`` or the login page's Deny) redirects, with ``error=access_denied``. The token side lives
in :mod:`._smart_tokens`, id_tokens and discovery in :mod:`._idtoken`, dynamic registration in
:mod:`._smart_register`.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from ._clock import SandboxClock
from ._data import Dataset
from ._http import JSON_UTF8, Request, Response, first_values, json_response
from ._idtoken import OIDC_KEYS_PATH, OidcSigner, openid_configuration
from ._login_page import error_page, login_page
from ._oauth import OAuthServer
from ._smart_model import (
    Grant,
    Identity,
    Launch,
    SmartApp,
    SmartSettings,
    check_login,
    jwt_shaped,
    patient_identity,
    provider_user,
)
from ._smart_register import JWT_BEARER_GRANT, DynamicClients
from ._smart_tokens import SmartTokens
from ._urls import FHIR_PATH, SandboxUrls

__all__ = ["SmartServer"]

#: Scopes that ask for no FHIR data or launch context; only such a pure OIDC login may omit ``aud``
#: (docs/epic-notes.md §2.2).
_OIDC_ONLY = frozenset({"openid", "fhirUser", "profile", "offline_access", "online_access"})
#: Epic's ``smart_style_url`` (docs/epic-notes.md §2.4) points at
#: ``.../api/epic/2016/EDI/HTTP/style/<n>/<base64>.json``.
_STYLE_PATH = "/api/epic/2016/EDI/HTTP/style/100019/TFRBX2V4dGVuc2lvbnM.json"
_STYLE = {
    "color_background": "#edeae3",
    "color_error": "#9e2d2d",
    "color_highlight": "#69b5ce",
    "color_modal_backdrop": "",
    "color_success": "#498e49",
    "color_text": "#303030",
    "dim_border_radius": "6px",
    "dim_font_size": "13px",
    "dim_spacing_size": "20px",
    "font_family_body": "Arial, Helvetica, sans-serif",
    "font_family_heading": "Arial, Helvetica, sans-serif",
}


class AuthorizeRejected(Exception):
    """An authorize request broke a rule; ``reason`` is shown on the error page and counted in stats."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Request:
    """A validated authorize request, waiting for the user (auto-login, the login page, or the launch)."""

    app: SmartApp
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    nonce: str | None
    challenge: str | None
    launch: Launch | None  # an EHR launch: the launch token was valid and ``launch`` is in scope


class SmartServer:
    """SMART App Launch for one sandbox; hooks itself into the OAuth server's routes and grant types."""

    def __init__(
        self,
        *,
        oauth: OAuthServer,
        dataset: Dataset,
        clock: SandboxClock,
        stats: collections.Counter[str],
        urls: SandboxUrls,
    ) -> None:
        self.oauth = oauth
        self.dataset = dataset
        self.clock = clock
        self.stats = stats
        self.settings = SmartSettings()
        self.apps: dict[str, SmartApp] = {}
        self.signer = OidcSigner()
        self.urls = urls
        self._launches: dict[str, Launch] = {}
        self._logins: dict[str, tuple[_Request, float]] = {}
        self.tokens = SmartTokens(
            oauth=oauth,
            apps=self.apps,
            settings=lambda: self.settings,
            signer=self.signer,
            clock=clock,
            stats=stats,
            fhir_base=lambda: urls.fhir_base,
            style_url=lambda: urls.origin + urls.root_path + _STYLE_PATH,
        )
        oauth.add_route("authorize", self._authorize)
        oauth.add_route("authorize/login", self._login)
        oauth.add_route(".well-known/openid-configuration", self._openid_configuration)
        oauth.add_grant("authorization_code", self.tokens.authorization_code)
        oauth.add_grant("refresh_token", self.tokens.refresh_token)
        self.dynamic = DynamicClients(oauth=oauth, tokens=self.tokens, clock=clock, stats=stats)
        oauth.add_route("register", self.dynamic.register)
        oauth.add_grant(JWT_BEARER_GRANT, self.dynamic.jwt_bearer)
        #: Paths outside ``/oauth2/`` that SMART serves (relative to the origin), for the app's router.
        root = urls.root_path
        self.paths: dict[str, Callable[[Request], Response]] = {
            root + OIDC_KEYS_PATH: self._jwks,
            root + FHIR_PATH + "/.well-known/openid-configuration": self._openid_configuration,
            root + _STYLE_PATH: lambda _request: json_response(_STYLE, content_type=JSON_UTF8),
        }

    # -- registry (EpicSandbox.register_app / mint_launch) -------------------------------------------------
    def add_app(self, app: SmartApp, resource_types: Iterable[str] | None) -> None:
        """Register (or replace) a validated app; its tokens then pass the FHIR bearer checks."""
        self.apps[app.client_id] = app
        self.oauth.register_app(app.client_id, resource_types=resource_types)

    def add_launch(
        self,
        patient: str,
        encounter: str | None,
        user: Identity,
        context: Mapping[str, str],
        client_id: str | None,
    ) -> str:
        """A launch token for a validated EHR launch context, valid ``launch_lifetime`` seconds."""
        expires_at = self.clock.now() + self.settings.launch_lifetime
        token = jwt_shaped("launch", {"exp": int(expires_at)}, padding=450)
        self._launches[token] = Launch(patient, encounter, user, dict(context), expires_at, client_id)
        self.stats["launches_minted"] += 1
        return token

    # -- /oauth2/authorize ---------------------------------------------------------------------------------
    def _authorize(self, request: Request) -> Response:
        self.stats["authorize_requests"] += 1
        try:
            auth = self._validate(self._params(request))
        except AuthorizeRejected as exc:
            return self._fail(exc.reason)
        if self.settings.deny_next:
            self.settings.deny_next = False
            return self._deny(auth)
        if auth.launch is not None:  # the clinician is already logged in to Hyperspace
            return self._approve(auth, auth.launch.user)
        if self.settings.auto_login:
            identity = self._auto_identity(auth)
            if identity is None:
                return self._fail("unknown_standalone_user")
            return self._approve(auth, identity)
        session = secrets.token_urlsafe(24)
        now = self.clock.now()
        for stale in [s for s, (_, exp) in self._logins.items() if exp <= now]:
            del self._logins[stale]
        self._logins[session] = (auth, now + self.settings.login_lifetime)
        return login_page(
            action=f"{self.urls.authorize}/login", session=session, client_id=auth.app.client_id
        )

    def _login(self, request: Request) -> Response:
        """The login form's POST: log in as one of Epic's sandbox users, or deny."""
        if request.method != "POST":
            return self._fail("login_not_post")
        form = request.form_fields()
        entry = self._logins.get(form.get("session", ""))
        if entry is None or entry[1] <= self.clock.now():
            return self._fail("unknown_login_session")
        auth = entry[0]
        if form.get("action") == "deny":
            del self._logins[form["session"]]
            return self._deny(auth)
        identity = check_login(form.get("username", ""), form.get("password", ""))
        if identity is None:
            self.stats["login_failures"] += 1
            return login_page(
                action=f"{self.urls.authorize}/login",
                session=form["session"],
                client_id=auth.app.client_id,
                error="Invalid username or password.",
            )
        del self._logins[form["session"]]
        return self._approve(auth, identity)

    def _params(self, request: Request) -> dict[str, str]:
        if request.method == "GET":
            pairs = request.query
        elif request.method == "POST":
            pairs = request.form()
            # docs/epic-notes.md §2.2: POST (Epic Nov 2020+) is for EHR launches only.
            if not any(key == "launch" and value for key, value in pairs):
                raise AuthorizeRejected("post_without_launch")
        else:
            raise AuthorizeRejected("bad_method")
        return first_values(pairs)

    def _validate(self, params: Mapping[str, str]) -> _Request:
        # Epic's authorize rules, each refused with its error page (docs/epic-notes.md §2.2).
        app = self.apps.get(params.get("client_id", ""))
        if app is None:
            raise AuthorizeRejected("unknown_client")
        redirect_uri = params.get("redirect_uri")
        if not redirect_uri:
            raise AuthorizeRejected("missing_redirect_uri")
        if redirect_uri not in app.redirect_uris:  # exact, case-sensitive
            raise AuthorizeRejected("redirect_uri_mismatch")
        if params.get("response_type") != "code":
            raise AuthorizeRejected("unsupported_response_type")
        scopes = tuple(dict.fromkeys(params.get("scope", "").split()))
        if not scopes:
            raise AuthorizeRejected("missing_scope")  # required in Epic's sandbox
        launch = self._launch(params.get("launch"), app)
        if launch is None and "launch" in scopes:
            raise AuthorizeRejected("launch_scope_without_launch")  # standalone must not ask for it
        aud = params.get("aud")
        if aud is None:
            if params.get("launch") or not set(scopes) <= _OIDC_ONLY:
                raise AuthorizeRejected("missing_aud")  # required with launch context since May 2023
        elif aud != self.urls.fhir_base:
            raise AuthorizeRejected("invalid_aud")
        challenge = self._challenge(params)
        return _Request(
            app,
            redirect_uri,
            scopes,
            params.get("state"),
            params.get("nonce"),
            challenge,
            launch if "launch" in scopes else None,  # without the launch scope the user logs in instead
        )

    def _launch(self, token: str | None, app: SmartApp) -> Launch | None:
        if not token:
            return None
        launch = self._launches.get(token)
        if launch is None or launch.expires_at <= self.clock.now():
            raise AuthorizeRejected("invalid_launch_token")
        if launch.client_id is not None and launch.client_id != app.client_id:
            raise AuthorizeRejected("invalid_launch_token")  # a launch token of another client
        return launch

    def _challenge(self, params: Mapping[str, str]) -> str | None:
        """PKCE with S256 only: ``plain`` (or a challenge without its method) is refused.

        Epic supports no other method (docs/epic-notes.md §2.2).
        """
        challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
        if challenge is None and method is None:
            if self.settings.require_pkce:
                raise AuthorizeRejected("pkce_required")
            return None
        if method is None:
            raise AuthorizeRejected("missing_code_challenge_method")
        if method != "S256":
            raise AuthorizeRejected("unsupported_code_challenge_method")
        if not challenge or len(challenge) != 43:
            raise AuthorizeRejected("bad_code_challenge")
        return challenge

    def _auto_identity(self, auth: _Request) -> Identity | None:
        if "launch/patient" in auth.scopes:  # a patient-facing (MyChart) standalone login
            return patient_identity(self.settings.standalone_patient)
        return provider_user(self.settings.standalone_user)  # None: neither FHIR nor FHIRTWO

    def _approve(self, auth: _Request, identity: Identity) -> Response:
        # The launch context Epic returns (docs/epic-notes.md §2.4).
        launch = auth.launch
        if launch is not None:
            patient: str | None = launch.patient
        elif identity.resource_type == "Patient":
            patient = identity.fhir_id  # patient-facing standalone launches return the patient
        elif "launch/patient" in auth.scopes:
            patient = self.settings.standalone_patient
        else:
            patient = None  # provider standalone launches carry no patient
        if patient is not None and patient not in self.dataset.resources.get("Patient", {}):
            return self._fail("unknown_patient")
        grant = Grant(
            client_id=auth.app.client_id,
            scopes=auth.scopes,
            identity=identity,
            patient=patient,
            encounter=launch.encounter if launch is not None else None,
            context=dict(launch.context) if launch is not None else {},
            need_patient_banner=launch is None,  # Hyperspace shows its own banner
            state=auth.state,
            nonce=auth.nonce,
        )
        code = self.tokens.issue_code(grant, redirect_uri=auth.redirect_uri, challenge=auth.challenge)
        return _redirect(auth.redirect_uri, code=code, state=auth.state)

    def _deny(self, auth: _Request) -> Response:
        self.stats["authorize_denied"] += 1
        return _redirect(auth.redirect_uri, error="access_denied", state=auth.state)

    def _fail(self, reason: str) -> Response:
        self.oauth.failures.append(reason)
        self.stats[f"authorize_failures:{reason}"] += 1
        return error_page(reason)

    # -- discovery ------------------------------------------------------------------------------------------
    def _openid_configuration(self, request: Request) -> Response:
        return json_response(
            openid_configuration(issuer=self.urls.oauth, jwks_uri=self.urls.jwks), content_type=JSON_UTF8
        )

    def _jwks(self, request: Request) -> Response:
        return json_response(self.signer.jwks(), content_type=JSON_UTF8)


def _redirect(uri: str, **params: str | None) -> Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    location = f"{uri}{'&' if urlsplit(uri).query else '?'}{query}"
    return Response(302, [("location", location), ("cache-control", "no-store")], b"")
