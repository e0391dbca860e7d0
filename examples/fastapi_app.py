"""A SMART on FHIR web app on FastAPI: EHR launch, standalone launch, the patient's name and latest vital signs.

Routes: ``/launch`` (Epic opens it with ``iss`` and ``launch``), ``/login`` (standalone), ``/callback`` (the
registered redirect URI) and ``/`` (the patient page). One ``httpx.AsyncClient`` and one ``SmartLaunch`` live
for the app's lifetime (FastAPI lifespan); each user's tokens stay server-side in an in-memory session keyed
by a random cookie. Configure with environment variables and run with uvicorn::

    EPIC_FHIR_BASE_URL=https://fhir.epic.com/interconnect-fhir-oauth/api/FHIR/R4 \\
    EPIC_FHIR_CLIENT_ID=<non-production client id> EPIC_FHIR_REDIRECT_URI=http://localhost:8000/callback \\
    python examples/fastapi_app.py          # optional: EPIC_FHIR_CLIENT_SECRET or EPIC_FHIR_PRIVATE_KEY (PEM path)

Without ``EPIC_FHIR_BASE_URL`` it drives one EHR launch against the in-process sandbox and prints the page.

FastAPI is not a dependency of the SDK: ``pip install fastapi uvicorn`` first (uvicorn serves the app against
a real Epic server; the offline run needs only fastapi).
"""

from __future__ import annotations

import html
import os
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from epic_fhir_async import (
    AuthorizationDenied,
    CodeExchangeError,
    EpicFHIRClient,
    LaunchError,
    ReauthorizationRequired,
    RetryTransport,
    SmartAuth,
    SmartLaunch,
    SmartTokenSet,
    Unauthorized,
    UntrustedIssuer,
)

COOKIE = "smart_session"
DEFAULT_SCOPES = "openid fhirUser launch/patient patient/Patient.read patient/Observation.read offline_access"


@dataclass(frozen=True)
class Settings:
    """The app's registration at Epic, from ``EPIC_FHIR_*`` variables (:meth:`from_env`) or given directly.

    With neither ``client_secret`` nor ``private_key`` the app is a public client (PKCE only, and Epic gives
    public clients no refresh token). ``client_secret`` makes it a confidential client that authenticates
    with ``client_secret_basic``; ``private_key`` (the path of a PEM file) with ``private_key_jwt``.
    ``redirect_uri`` must be registered on the app exactly, character for character.
    """

    base_url: str
    client_id: str
    redirect_uri: str
    scopes: str = DEFAULT_SCOPES
    client_secret: str | None = None
    private_key: str | None = None  # path to a PEM file (private_key_jwt)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            base_url=os.environ["EPIC_FHIR_BASE_URL"],
            client_id=os.environ["EPIC_FHIR_CLIENT_ID"],
            redirect_uri=os.environ.get(
                "EPIC_FHIR_REDIRECT_URI", f"http://localhost:{os.environ.get('PORT', '8000')}/callback"
            ),
            scopes=os.environ.get("EPIC_FHIR_SCOPES", DEFAULT_SCOPES),
            client_secret=os.environ.get("EPIC_FHIR_CLIENT_SECRET"),
            private_key=os.environ.get("EPIC_FHIR_PRIVATE_KEY"),
        )


@dataclass
class Session:
    """One browser's state. ``tokens`` holds secrets: it never leaves the server (only the id is a cookie)."""

    pending: dict[str, Any] | None = None  # the AuthorizationRequest between /launch and /callback
    tokens: dict[str, Any] | None = None  # SmartTokenSet.to_dict(), kept current by on_refresh
    auth: SmartAuth | None = None  # one per session: its lock makes refreshes single-flight


class SessionStore:
    """In-memory sessions keyed by 256 random bits (unguessable, so unsigned). Use Redis or a DB with
    several workers, keeping ``Session.tokens`` and rebuilding ``auth`` with ``launch.auth(...)``."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def get(self, request: Request) -> Session | None:
        return self._sessions.get(request.cookies.get(COOKIE, ""))

    def new(self, request: Request, response: Response, session: Session | None = None) -> Session:
        """A fresh session id (also after login: the id an attacker may have planted becomes useless)."""
        self._sessions.pop(request.cookies.get(COOKIE, ""), None)
        sid = secrets.token_urlsafe(32)
        session = session or Session()
        self._sessions[sid] = session
        secure = request.url.scheme == "https"
        # SameSite=Lax: the browser still sends it on the top-level redirect back from Epic to /callback.
        response.set_cookie(COOKIE, sid, httponly=True, secure=secure, samesite="lax", path="/")
        return session


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status,
    )


def patient_name(patient: Mapping[str, Any]) -> str:
    names = patient.get("name") or [{}]
    name = next((n for n in names if n.get("use") == "official"), names[0])
    return str(name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip() or "?")


def _value(observation: Mapping[str, Any]) -> str:
    """``72 /min``, or ``113/71 mm[Hg]`` for a blood pressure (its values are components)."""
    quantities = [observation["valueQuantity"]] if "valueQuantity" in observation else []
    quantities += [c["valueQuantity"] for c in observation.get("component", []) if "valueQuantity" in c]
    if not quantities:
        return str(observation.get("valueString", ""))
    units = {q.get("unit", "") for q in quantities}
    values = "/".join(str(q.get("value")) for q in quantities)
    return (
        f"{values} {units.pop()}".strip()
        if len(units) == 1
        else ", ".join(f"{q.get('value')} {q.get('unit', '')}".strip() for q in quantities)
    )


async def latest_vitals(client: EpicFHIRClient, patient_id: str) -> list[tuple[str, str, str]]:
    """(name, value, when) of the newest Observation of each vital sign (Epic requires the category,
    docs/epic-notes.md §3.3)."""
    latest: dict[str, Mapping[str, Any]] = {}
    async for obs in client.search("Observation", patient=patient_id, category="vital-signs"):
        name = obs.get("code", {}).get("text") or "?"
        if obs.get("effectiveDateTime", "") > latest.get(name, {}).get("effectiveDateTime", ""):
            latest[name] = obs
    return sorted((n, _value(o), str(o.get("effectiveDateTime", ""))) for n, o in latest.items())


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The app; ``transport`` carries its requests to Epic (tests pass the sandbox's)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        inner = transport or httpx.AsyncHTTPTransport(retries=0)
        async with httpx.AsyncClient(transport=RetryTransport(inner), timeout=30.0) as http:
            app.state.http = http
            app.state.sessions = SessionStore()
            app.state.smart = SmartLaunch(
                settings.base_url,
                client_id=settings.client_id,
                redirect_uri=settings.redirect_uri,
                scopes=settings.scopes,
                client_secret=settings.client_secret,
                private_key=settings.private_key,
                http_client=http,
            )
            yield

    app = FastAPI(lifespan=lifespan)

    async def start(request: Request, *, launch: str | None = None, iss: str | None = None) -> Response:
        smart: SmartLaunch = app.state.smart
        try:
            authorization = await smart.begin(launch=launch, iss=iss)
        except UntrustedIssuer:
            return page("Unknown EHR", "<p>This app is not configured for the EHR that launched it.</p>", 400)
        response = RedirectResponse(authorization.url, status_code=302)
        app.state.sessions.new(request, response).pending = authorization.to_dict()
        return response

    @app.get("/launch")
    async def ehr_launch(request: Request) -> Response:
        iss, launch = request.query_params.get("iss"), request.query_params.get("launch")
        if not iss or not launch:
            return page(
                "Bad launch", "<p>An EHR launch needs <code>iss</code> and <code>launch</code>.</p>", 400
            )
        return await start(request, launch=launch, iss=iss)

    @app.get("/login")
    async def standalone_login(request: Request) -> Response:
        return await start(request)

    @app.get("/callback")
    async def callback(request: Request) -> Response:
        smart: SmartLaunch = app.state.smart
        session = app.state.sessions.get(request)
        pending = session.pending if session is not None else None
        if session is None or pending is None:
            return page("No launch in progress", "<p><a href='/login'>Start again</a></p>", 400)
        session.pending = None  # single-use, whatever happens next
        try:
            tokens = await smart.complete(pending, request.query_params)
        except AuthorizationDenied as exc:
            return page("Access was not granted", f"<p>{html.escape(exc.error)}</p>", 403)
        except CodeExchangeError as exc:
            return page(
                "Sign-in failed", f"<p>Epic refused the sign-in ({html.escape(exc.error or '')}).</p>", 502
            )
        except LaunchError as exc:  # wrong state, bad id_token, launch too old
            return page("Sign-in failed", f"<p>{html.escape(str(exc))}</p>", 400)
        response = RedirectResponse("/", status_code=303)
        fresh = app.state.sessions.new(request, response)
        fresh.tokens = tokens.to_dict()

        def save(updated: SmartTokenSet) -> None:
            fresh.tokens = updated.to_dict()  # a real app writes this to its session database

        fresh.auth = smart.auth(tokens, on_refresh=save)
        return response

    @app.get("/")
    async def patient_page(request: Request) -> Response:
        session = app.state.sessions.get(request)
        if session is None or session.auth is None:
            return page("Not signed in", "<p><a href='/login'>Sign in with Epic</a></p>", 401)
        tokens = session.auth.token_set
        if tokens.patient is None:
            return page("No patient", "<p>The launch carried no patient context.</p>", 400)
        async with EpicFHIRClient(tokens.fhir_base, auth=session.auth, http_client=app.state.http) as client:
            try:
                patient = await client.read("Patient", tokens.patient)
                vitals = await latest_vitals(client, tokens.patient)
            except (ReauthorizationRequired, Unauthorized):
                session.auth = None
                return page(
                    "Session expired",
                    "<p>Launch the app again from Epic, or <a href='/login'>sign in</a>.</p>",
                    401,
                )
        name = html.escape(patient_name(patient))
        banner = ""
        if tokens.need_patient_banner:  # Epic says whether its own banner is already on screen
            details = f"{patient.get('birthDate', '')} {patient.get('gender', '')}"
            banner = f"<header class='banner'><b>{name}</b> {html.escape(details)}</header>"
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{html.escape(v)}</td><td>{html.escape(t)}</td></tr>"
            for n, v, t in vitals
        )
        table = f"<table><tr><th>Vital sign</th><th>Value</th><th>When</th></tr>{rows}</table>"
        return page(f"Patient: {patient_name(patient)}", banner + table)

    return app


# -- offline demo: both apps in-process, a "browser" that follows redirects between them ------------------


class HostRouter(httpx.AsyncBaseTransport):
    """Routes each request to the transport registered for its ``host[:port]`` (the app, the sandbox)."""

    def __init__(self, routes: Mapping[str, httpx.AsyncBaseTransport]) -> None:
        self.routes = dict(routes)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self.routes.get(request.url.netloc.decode("ascii"))
        if transport is None:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        return await transport.handle_async_request(request)


async def demo() -> None:
    from epic_fhir_async.sandbox import EpicSandbox

    app_origin = "https://smart-app.example"
    sandbox = EpicSandbox(seed=0, patients=0)
    sandbox.register_app("fastapi-demo", redirect_uris=[f"{app_origin}/callback"])
    settings = Settings(sandbox.base_url, client_id="fastapi-demo", redirect_uri=f"{app_origin}/callback")
    app = create_app(settings, transport=sandbox.transport())
    router = HostRouter(
        {
            "smart-app.example": httpx.ASGITransport(app=app),
            httpx.URL(sandbox.origin).netloc.decode(): sandbox.transport(),
        }
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=router, follow_redirects=True) as browser,
    ):
        launch = sandbox.mint_launch("erXuFYUfucBZaryVksYEcMg3")  # Epic opens the app for Camila Lopez
        response = await browser.get(
            f"{app_origin}/launch", params={"iss": sandbox.base_url, "launch": launch}
        )
    print(f"{response.status_code} after {len(response.history)} redirects")
    body = response.text.split("<body>", 1)[-1]
    text = re.sub(r"<[^>]+>", " ", body.replace("</tr>", "\n").replace("</h1>", "\n"))
    print("\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip()))


if __name__ == "__main__":
    if os.environ.get("EPIC_FHIR_BASE_URL"):
        import uvicorn

        uvicorn.run(
            create_app(Settings.from_env()), host="127.0.0.1", port=int(os.environ.get("PORT", "8000"))
        )
    else:
        anyio.run(demo)
