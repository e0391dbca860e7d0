"""A SMART on FHIR web app on FastAPI, ready for several workers: EHR launch, standalone launch, the patient's
name and latest vital signs.

Routes: ``/launch`` (Epic opens it with ``iss`` and ``launch``), ``/login`` (standalone), ``/callback`` (the
registered redirect URI), ``/`` (the patient page), ``/api/patient`` (the patient's id and name as JSON) and
``/logout``. One ``EpicFHIRClient`` lives for the app's lifetime (one connection pool, one retry policy, one
429 pause); each request uses a view of it bound to the signed-in user (``client.with_auth``). The users'
token sets are in a ``TokenSetStore``: in memory with one worker, in Redis with several (``REDIS_URL``),
encrypted with the app's key (``APP_SECRET_KEY``, a Fernet key); the cookie holds only a random session id.
A refresh happens once per user per expiry, whichever worker each request reaches.

Three ways to run it:

    python examples/fastapi_app.py          # offline: one EHR launch against the in-process sandbox, printed

    # the sandbox served on 127.0.0.1 and the app under uvicorn with 2 workers sharing sessions in Redis;
    # open the printed URL and sign in as fhircamila / epicepic1
    python examples/fastapi_app.py serve --workers 2 --redis redis://127.0.0.1:6379/0

    # a real Epic server (non-production client id), 4 workers
    EPIC_FHIR_BASE_URL=https://fhir.epic.com/interconnect-fhir-oauth/api/FHIR/R4 \\
    EPIC_FHIR_CLIENT_ID=<client id> EPIC_FHIR_REDIRECT_URI=https://app.example.org/callback \\
    EPIC_FHIR_CLIENT_SECRET=<secret> APP_SECRET_KEY=<TokenCipher.generate_key()> REDIS_URL=redis://... \\
    uvicorn --app-dir examples fastapi_app:app_from_env --factory --workers 4

FastAPI is not a dependency of the SDK: ``pip install fastapi uvicorn`` (and ``'epic-fhir-async[redis]'`` for
several workers).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
import re
import secrets
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from epic_fhir_async import (
    AuthorizationDenied,
    CodeExchangeError,
    EpicFHIRClient,
    LaunchError,
    ReauthorizationRequired,
    StoreUnavailable,
    Unauthorized,
    UntrustedIssuer,
)
from epic_fhir_async.auth import (
    InMemoryTokenSetStore,
    RedisTokenSetStore,
    SmartAuth,
    SmartLaunch,
    SmartSessions,
    TokenCipher,
    TokenSetStore,
)

SESSION_COOKIE = "smart_session"  # the session id, for the signed-in user's requests
LAUNCH_COOKIE = "smart_launch"  # the encrypted state of a sign-in in progress, for /callback only
DEFAULT_SCOPES = "openid fhirUser launch/patient patient/Patient.read patient/Observation.read offline_access"


@dataclass(frozen=True)
class Settings:
    """The app's registration at Epic and its deployment, from environment variables (:meth:`from_env`).

    With neither ``client_secret`` nor ``private_key`` the app is a public client (PKCE only, and Epic gives
    public clients no refresh token). ``redirect_uri`` must be registered on the app exactly. ``redis_url``:
    sessions shared by every worker (else in this process's memory); ``secret_key``: the Fernet key that
    encrypts them and the sign-in cookie (every worker needs the same one; required with Redis).
    ``worker_header``: answer with ``X-Worker-Pid`` (to see which worker served a request; a demo aid).
    """

    base_url: str
    client_id: str
    redirect_uri: str
    scopes: str = DEFAULT_SCOPES
    client_secret: str | None = None
    private_key: str | None = None  # path to a PEM file (private_key_jwt)
    redis_url: str | None = None
    secret_key: str | None = None
    worker_header: bool = False

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
            redis_url=os.environ.get("REDIS_URL"),
            secret_key=os.environ.get("APP_SECRET_KEY"),
            worker_header=os.environ.get("APP_WORKER_HEADER") == "1",
        )

    def __repr__(self) -> str:  # never the secret or the key
        return f"Settings(base_url={self.base_url!r}, client_id={self.client_id!r}, redis={bool(self.redis_url)})"


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


SIGN_IN_AGAIN = "<p>Launch the app again from Epic, or <a href='/login'>sign in</a>.</p>"


def signed_out(title: str, status: int = 401) -> Response:
    """A page asking to sign in again; the session cookie (unknown, ended or unreadable) is dropped."""
    response = page(title, SIGN_IN_AGAIN, status)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    store: TokenSetStore | None = None,
    clock: Callable[[], float] | None = None,
) -> FastAPI:
    """The app. Tests pass the sandbox's ``transport`` (the requests to Epic), a ``store`` and a ``clock``
    (epoch seconds, for the token times)."""
    if settings.redis_url and not settings.secret_key:
        raise SystemExit("APP_SECRET_KEY is required with REDIS_URL: every worker must decrypt the sessions")
    cipher = TokenCipher(settings.secret_key or TokenCipher.generate_key())
    clocks: dict[str, Any] = {"clock": clock, "wall_clock": clock} if clock is not None else {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sessions_store: TokenSetStore = store if store is not None else InMemoryTokenSetStore()
        if store is None and settings.redis_url:
            redis_store = RedisTokenSetStore(settings.redis_url, cipher=cipher)
            await redis_store.check()  # a Redis that does not answer stops the start, not a user's request
            sessions_store = redis_store
        async with EpicFHIRClient(settings.base_url, transport=transport) as client:
            launch = SmartLaunch(
                settings.base_url,
                client_id=settings.client_id,
                redirect_uri=settings.redirect_uri,
                scopes=settings.scopes,
                client_secret=settings.client_secret,
                private_key=settings.private_key,
                http_client=client.http,  # discovery and token requests share the client's pool and retries
                **clocks,
            )
            app.state.client = client
            app.state.sessions = SmartSessions(launch, sessions_store, cipher=cipher)
            try:
                yield
            finally:
                if isinstance(sessions_store, RedisTokenSetStore) and store is None:
                    await sessions_store.aclose()

    app = FastAPI(lifespan=lifespan)

    if settings.worker_header:

        @app.middleware("http")
        async def worker_pid(request: Request, call_next: Callable[[Request], Any]) -> Response:
            response: Response = await call_next(request)
            response.headers["X-Worker-Pid"] = str(os.getpid())
            return response

    def cookie_options(request: Request) -> dict[str, Any]:
        # SameSite=Lax: the browser still sends them on the top-level redirect back from Epic to /callback.
        return {"httponly": True, "secure": request.url.scheme == "https", "samesite": "lax"}

    async def start(request: Request, *, launch: str | None = None, iss: str | None = None) -> Response:
        sessions: SmartSessions = app.state.sessions
        try:
            pending = await sessions.begin(launch=launch, iss=iss)
        except UntrustedIssuer:
            return page("Unknown EHR", "<p>This app is not configured for the EHR that launched it.</p>", 400)
        response = RedirectResponse(pending.url, status_code=302)
        max_age = int(sessions.launch.max_age or 600)
        response.set_cookie(
            LAUNCH_COOKIE, pending.cookie, max_age=max_age, path="/callback", **cookie_options(request)
        )
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
        sessions: SmartSessions = app.state.sessions
        pending = request.cookies.get(LAUNCH_COOKIE)
        if not pending:
            return page("No launch in progress", "<p><a href='/login'>Start again</a></p>", 400)
        response: Response
        try:
            session_id, _ = await sessions.complete(
                pending, request.query_params, previous_session=request.cookies.get(SESSION_COOKIE)
            )
        except AuthorizationDenied as exc:
            response = page("Access was not granted", f"<p>{html.escape(exc.error)}</p>", 403)
        except CodeExchangeError as exc:
            response = page(
                "Sign-in failed", f"<p>Epic refused the sign-in ({html.escape(exc.error or '')}).</p>", 502
            )
        except LaunchError as exc:  # wrong state, unreadable cookie, bad id_token, launch too old
            response = page("Sign-in failed", f"<p>{html.escape(str(exc))}</p>", 400)
        except StoreUnavailable:
            response = page(
                "Sign-in failed", "<p>Sessions are unavailable right now: try again soon.</p>", 503
            )
        else:
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(SESSION_COOKIE, session_id, path="/", **cookie_options(request))
        response.delete_cookie(LAUNCH_COOKIE, path="/callback")  # single-use, whatever happened
        return response

    async def user_auth(request: Request) -> SmartAuth | Response:
        """The signed-in user's auth, or the page that asks them to sign in (again)."""
        sessions: SmartSessions = app.state.sessions
        cookie = request.cookies.get(SESSION_COOKIE)
        try:
            return await sessions.auth(cookie)
        except ReauthorizationRequired:  # no cookie, a forged or unknown one, an ended or unreadable session
            if cookie is None:
                return page("Not signed in", "<p><a href='/login'>Sign in with Epic</a></p>", 401)
            return signed_out("Please sign in again")
        except StoreUnavailable:
            return page(
                "Sessions are unavailable",
                "<p>Try again in a moment, or <a href='/login'>sign in again</a> once it works.</p>",
                503,
            )

    @app.get("/")
    async def patient_page(request: Request) -> Response:
        auth = await user_auth(request)
        if isinstance(auth, Response):
            return auth
        patient_id = auth.token_set.patient
        if patient_id is None:
            return page("No patient", "<p>The launch carried no patient context.</p>", 400)
        try:
            async with app.state.client.with_auth(auth) as fhir:
                patient = await fhir.read("Patient", patient_id)
                vitals = await latest_vitals(fhir, patient_id)
        except (ReauthorizationRequired, Unauthorized):  # the refresh was refused, or the token revoked
            return signed_out("Session expired")
        except StoreUnavailable:
            return page("Sessions are unavailable", "<p>Try again in a moment.</p>", 503)
        name = html.escape(patient_name(patient))
        banner = ""
        if auth.token_set.need_patient_banner:  # Epic says whether its own banner is already on screen
            details = f"{patient.get('birthDate', '')} {patient.get('gender', '')}"
            banner = f"<header class='banner'><b>{name}</b> {html.escape(details)}</header>"
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{html.escape(v)}</td><td>{html.escape(t)}</td></tr>"
            for n, v, t in vitals
        )
        table = f"<table><tr><th>Vital sign</th><th>Value</th><th>When</th></tr>{rows}</table>"
        return page(f"Patient: {patient_name(patient)}", banner + table)

    @app.get("/api/patient")
    async def patient_json(request: Request) -> Response:
        auth = await user_auth(request)
        if isinstance(auth, Response):
            return JSONResponse({"error": "sign_in"}, status_code=auth.status_code)
        if auth.token_set.patient is None:
            return JSONResponse({"error": "no_patient"}, status_code=400)
        try:
            async with app.state.client.with_auth(auth) as fhir:
                patient = await fhir.read("Patient", auth.token_set.patient)
        except (ReauthorizationRequired, Unauthorized):
            return JSONResponse({"error": "sign_in"}, status_code=401)
        except StoreUnavailable:
            return JSONResponse({"error": "try_again"}, status_code=503)
        return JSONResponse({"patient": patient["id"], "name": patient_name(patient)})

    @app.get("/logout")
    async def logout(request: Request) -> Response:
        with contextlib.suppress(StoreUnavailable):  # the cookie goes anyway; the session expires on its own
            await app.state.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = page("Signed out", "<p><a href='/login'>Sign in again</a></p>")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return app


def app_from_env() -> FastAPI:
    """The factory uvicorn's workers call: ``uvicorn --app-dir examples fastapi_app:app_from_env --factory``."""
    return create_app(Settings.from_env())


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


# -- served: the sandbox on 127.0.0.1 in a thread, the app under uvicorn with N workers ------------------------


def serve_sandbox(sandbox: Any) -> str:
    """Serve ``sandbox`` on a free 127.0.0.1 port from a daemon thread; its FHIR base URL."""
    ready = threading.Event()
    served: dict[str, str] = {}

    async def run() -> None:
        async with sandbox.serve(host="127.0.0.1", port=0) as base_url:
            served["base_url"] = base_url
            ready.set()
            await anyio.sleep_forever()

    threading.Thread(target=anyio.run, args=(run,), daemon=True, name="epic-sandbox").start()
    if not ready.wait(30):
        raise SystemExit("the sandbox did not start")
    return served["base_url"]


def serve(argv: list[str]) -> None:
    """Serve the sandbox on 127.0.0.1 and the app under uvicorn (sign in as fhircamila / epicepic1)."""
    import uvicorn

    from epic_fhir_async.sandbox import EpicSandbox

    parser = argparse.ArgumentParser(prog="fastapi_app.py serve", description=serve.__doc__)
    parser.add_argument("--port", type=int, default=8000, help="the app's port on 127.0.0.1 (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument(
        "--redis", default=os.environ.get("REDIS_URL"), help="redis://... (needed for >1 worker)"
    )
    parser.add_argument(
        "--token-lifetime", type=int, default=3600, help="the sandbox's access token life (s)"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the sandbox adds to each request")
    args = parser.parse_args(argv)
    if args.workers > 1 and not args.redis:
        parser.error(
            "several workers share their sessions through Redis: pass --redis redis://127.0.0.1:6379/0"
        )
    app_url = f"http://127.0.0.1:{args.port}"
    sandbox = EpicSandbox(seed=0, patients=20, token_lifetime=args.token_lifetime, latency=args.latency)
    sandbox.smart.auto_login = False  # the sandbox's login page: fhircamila / epicepic1, FHIR / EpicFhir11!
    secret = secrets.token_urlsafe(24)
    sandbox.register_app(
        "fastapi-demo", redirect_uris=[f"{app_url}/callback"], client_secret=secret, persistent_access=True
    )
    base_url = serve_sandbox(sandbox)
    # The workers are new processes that read their settings from the environment.
    os.environ.update(
        EPIC_FHIR_BASE_URL=base_url,
        EPIC_FHIR_CLIENT_ID="fastapi-demo",
        EPIC_FHIR_CLIENT_SECRET=secret,
        EPIC_FHIR_REDIRECT_URI=f"{app_url}/callback",
        APP_SECRET_KEY=os.environ.get("APP_SECRET_KEY") or TokenCipher.generate_key(),
        APP_WORKER_HEADER="1",
    )
    if args.redis:
        os.environ["REDIS_URL"] = args.redis
    print(f"sandbox: {base_url}", flush=True)
    print(f"app: {app_url}/login  (sign in as fhircamila / epicepic1)", flush=True)
    uvicorn.run(
        "fastapi_app:app_from_env",
        factory=True,
        app_dir=str(Path(__file__).resolve().parent),
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2:])
    elif os.environ.get("EPIC_FHIR_BASE_URL"):
        import uvicorn

        uvicorn.run(app_from_env(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
    else:
        anyio.run(demo)
