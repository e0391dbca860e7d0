"""examples/fastapi_app.py end to end: a browser follows redirects between the FastAPI app and the sandbox.

Both ASGI apps run in-process: the browser's transport routes the app's host to FastAPI and the sandbox's host
to the sandbox; the app reaches the sandbox through the sandbox's transport. Here: the launches, the cookies,
fifty users at once on one app process, and bad input (forged cookies, a store that is down, a wrong key).
The app served by uvicorn with two workers and driven by Chromium is in test_web_app_browser.py.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

from epic_fhir_async.auth import (
    InMemoryTokenSetStore,
    RedisTokenSetStore,
    SigningKey,
    SmartTokenSet,
    TokenCipher,
    TokenSetStore,
    generate_private_key,
    private_key_pem,
    public_jwks,
)
from epic_fhir_async.sandbox import EpicSandbox, SandboxClock

from .._processes import free_port

APP = "https://smart-app.example"
REDIRECT = f"{APP}/callback"
CAMILA = "erXuFYUfucBZaryVksYEcMg3"
SECRET = "web-app-secret"
NOW = 1_780_000_000.0


def _load_example() -> ModuleType:
    path = Path(__file__).parents[2] / "examples" / "fastapi_app.py"
    spec = importlib.util.spec_from_file_location("fastapi_app_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


example = _load_example()


@pytest.fixture(scope="module")
def app_key() -> SigningKey:
    return generate_private_key("RS384")


@dataclass
class World:
    sandbox: EpicSandbox
    app: Any  # FastAPI
    browser: httpx.AsyncClient

    async def ehr_launch(self, patient: str = CAMILA, *, iss: str | None = None) -> httpx.Response:
        launch = self.sandbox.mint_launch(patient)
        return await self.browser.get(
            f"{APP}/launch", params={"iss": iss or self.sandbox.base_url, "launch": launch}
        )

    async def login(self) -> httpx.Response:
        return await self.browser.get(f"{APP}/login")


@asynccontextmanager
async def world(
    kind: str,
    tmp_path: Path,
    app_key: SigningKey,
    *,
    sandbox: EpicSandbox | None = None,
    store: TokenSetStore | None = None,
    clock: Callable[[], float] | None = None,
    settings: dict[str, Any] | None = None,
) -> AsyncIterator[World]:
    sandbox = sandbox or EpicSandbox(seed=0, patients=0, token_lifetime=600)
    settings = dict(settings or {})
    if kind == "public":
        sandbox.register_app("web", redirect_uris=[REDIRECT])
    elif kind == "secret":
        sandbox.register_app("web", redirect_uris=[REDIRECT], client_secret=SECRET, persistent_access=True)
        settings["client_secret"] = SECRET
    else:
        pem = tmp_path / "key.pem"
        pem.write_bytes(private_key_pem(app_key))
        pem.chmod(0o600)  # a group-readable key warns (InsecureKeyFileWarning), an error under this suite
        sandbox.register_app(
            "web", redirect_uris=[REDIRECT], jwks=public_jwks(app_key), persistent_access=True
        )
        settings["private_key"] = str(pem)
    app = example.create_app(
        example.Settings(sandbox.base_url, client_id="web", redirect_uri=REDIRECT, **settings),
        transport=sandbox.transport(),
        store=store,
        clock=clock,
    )
    router = example.HostRouter(
        {"smart-app.example": httpx.ASGITransport(app=app), "127.0.0.1:8765": sandbox.transport()}
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=router, follow_redirects=True) as browser,
    ):
        yield World(sandbox, app, browser)


async def stored_tokens(w: World) -> SmartTokenSet:
    """The signed-in browser's token set, as the app's store holds it."""
    tokens = await w.app.state.sessions.store.load(w.browser.cookies[example.SESSION_COOKIE])
    assert tokens is not None
    return tokens  # type: ignore[no-any-return]


def assert_patient_page(response: httpx.Response, name: str) -> None:
    assert response.status_code == 200, response.text
    assert f"Patient: {name}" in response.text
    for vital in ("BP", "Pulse", "Temp", "SpO2"):
        assert f"<td>{vital}</td>" in response.text
    assert str(response.url) == f"{APP}/"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["public", "jwt"])
async def test_ehr_launch_shows_the_patient_and_latest_vitals(
    kind: str, tmp_path: Path, app_key: SigningKey
) -> None:
    async with world(kind, tmp_path, app_key) as w:
        response = await w.ehr_launch(CAMILA)
    assert_patient_page(response, "Camila Maria Lopez")
    hops = [str(r.url).split("?")[0] for r in response.history]
    assert hops == [f"{APP}/launch", w.sandbox.authorize_url, f"{APP}/callback"]
    assert (
        "class='banner'" not in response.text
    )  # Hyperspace shows its own banner (need_patient_banner false)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["public", "secret"])
async def test_standalone_launch_shows_the_patient_with_a_banner(
    kind: str, tmp_path: Path, app_key: SigningKey
) -> None:
    async with world(kind, tmp_path, app_key) as w:
        response = await w.login()
    assert_patient_page(response, "Camila Maria Lopez")
    assert "class='banner'" in response.text


@pytest.mark.anyio
async def test_the_session_cookie_is_random_http_only_and_rotated_at_login(
    tmp_path: Path, app_key: SigningKey
) -> None:
    async with world("secret", tmp_path, app_key) as w:
        w.browser.cookies.set(
            example.SESSION_COOKIE, "planted-by-an-attacker" + "x" * 21, domain="smart-app.example"
        )
        response = await w.ehr_launch()
        before_login = response.history[0].headers.get_list("set-cookie")
        after_login = response.history[-1].headers.get_list("set-cookie")
        tokens = await stored_tokens(w)
        session_id = w.browser.cookies[example.SESSION_COOKIE]
    (pending,) = before_login  # /launch: only the encrypted sign-in state, for /callback
    assert pending.startswith(f"{example.LAUNCH_COOKIE}=")
    assert "Path=/callback" in pending
    assert len(pending) < 2000  # browsers keep 4 kB per cookie: the ~1.3 kB launch token is left out
    (session, cleared) = sorted(after_login, reverse=True)
    assert session.startswith(f"{example.SESSION_COOKIE}=")
    assert cleared.startswith(f'{example.LAUNCH_COOKIE}=""')  # single-use: dropped at the callback
    for header in (pending, session):
        assert "HttpOnly" in header
        assert "Secure" in header
        assert "samesite=lax" in header.lower()
    assert len(session_id) == 43
    assert not session_id.startswith("planted")  # no session fixation: a new id at sign-in
    for secret in (tokens.access_token, tokens.refresh_token or "", SECRET):
        assert secret
        assert secret not in response.text
        assert secret not in " ".join(before_login + after_login)


@pytest.mark.anyio
async def test_an_expired_token_is_refreshed_and_the_session_store_updated(
    tmp_path: Path, app_key: SigningKey
) -> None:
    async with world("secret", tmp_path, app_key) as w:
        assert (await w.ehr_launch()).status_code == 200
        first = (await stored_tokens(w)).access_token
        w.sandbox.clock.advance(601)  # the sandbox expires the token under the app's feet
        before = w.sandbox.stats["token_requests"]
        response = await w.browser.get(f"{APP}/")
        assert_patient_page(response, "Camila Maria Lopez")
        assert w.sandbox.stats["token_requests"] - before == 1
        assert (await stored_tokens(w)).access_token != first  # the store has the new tokens


@pytest.mark.anyio
async def test_a_public_clients_expired_session_asks_to_launch_again(
    tmp_path: Path, app_key: SigningKey
) -> None:
    async with world("public", tmp_path, app_key) as w:
        assert (await w.ehr_launch()).status_code == 200
        w.sandbox.clock.advance(3601)  # past the token's life on both clocks' terms
        response = await w.browser.get(f"{APP}/")
    assert response.status_code == 401
    assert "Session expired" in response.text
    assert f'{example.SESSION_COOKIE}=""' in response.headers["set-cookie"]  # the ended session's cookie goes


@pytest.mark.anyio
async def test_an_untrusted_iss_is_refused_before_any_redirect(tmp_path: Path, app_key: SigningKey) -> None:
    async with world("public", tmp_path, app_key) as w:
        response = await w.ehr_launch(iss="https://phish.example/api/FHIR/R4")
        missing = await w.browser.get(f"{APP}/launch", params={"iss": w.sandbox.base_url})
    assert response.status_code == 400
    assert response.history == []
    assert "not configured" in response.text
    assert missing.status_code == 400
    assert w.sandbox.stats["authorize_requests"] == 0


@pytest.mark.anyio
async def test_a_denied_authorization_shows_an_error_page(tmp_path: Path, app_key: SigningKey) -> None:
    async with world("public", tmp_path, app_key) as w:
        w.sandbox.smart.deny_next = True
        response = await w.login()
    assert response.status_code == 403
    assert "access_denied" in response.text


@pytest.mark.anyio
async def test_a_forged_callback_is_refused_without_a_token_request(
    tmp_path: Path, app_key: SigningKey
) -> None:
    async with world("public", tmp_path, app_key) as w:
        w.browser.follow_redirects = False
        to_epic = await w.login()  # the victim's browser starts a launch; the session holds its state
        assert to_epic.status_code == 302
        forged = await w.browser.get(f"{APP}/callback", params={"code": "attacker-code", "state": "guess"})
        replay = await w.browser.get(f"{APP}/callback", params={"code": "attacker-code", "state": "guess"})
        stranger = await httpx.AsyncClient(transport=w.browser._transport).get(
            f"{APP}/callback?code=x&state=y"
        )
    assert forged.status_code == 400
    assert "does not match" in forged.text
    assert replay.status_code == 400
    assert "No launch in progress" in replay.text
    assert stranger.status_code == 400
    assert w.sandbox.stats["token_requests"] == 0


@pytest.mark.anyio
async def test_not_signed_in(tmp_path: Path, app_key: SigningKey) -> None:
    async with world("public", tmp_path, app_key) as w:
        response = await w.browser.get(f"{APP}/")
    assert response.status_code == 401
    assert "/login" in response.text


# -- many users on one app process ------------------------------------------------------------------------------


class CountingStore(InMemoryTokenSetStore):
    """The in-memory store, counting saves per session: one at sign-in, then one per refresh."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: Counter[str] = Counter()

    async def save(self, session_id: str, token_set: SmartTokenSet) -> None:
        self.saves[session_id] += 1
        await super().save(session_id, token_set)


@pytest.mark.anyio
async def test_fifty_users_at_once_each_see_only_their_patient_and_refresh_once_per_expiry(
    tmp_path: Path, app_key: SigningKey
) -> None:
    users = 50
    sandbox = EpicSandbox(seed=0, patients=users, token_lifetime=300, clock=SandboxClock(frozen_at=NOW))
    store = CountingStore()
    async with world("secret", tmp_path, app_key, sandbox=sandbox, store=store, clock=sandbox.clock.now) as w:
        patients = sandbox.dataset.patient_ids[:users]
        assert len(set(patients)) == users
        browsers = [
            httpx.AsyncClient(transport=w.browser._transport, follow_redirects=True) for _ in patients
        ]
        try:
            limiter = anyio.CapacityLimiter(10)

            async def sign_in(browser: httpx.AsyncClient, patient: str) -> None:
                async with limiter:
                    launch = sandbox.mint_launch(patient)
                    response = await browser.get(
                        f"{APP}/launch", params={"iss": sandbox.base_url, "launch": launch}
                    )
                assert response.status_code == 200, response.text

            async with anyio.create_task_group() as tg:
                for browser, patient in zip(browsers, patients, strict=True):
                    tg.start_soon(sign_in, browser, patient)
            sessions = {b.cookies[example.SESSION_COOKIE]: p for b, p in zip(browsers, patients, strict=True)}
            assert len(sessions) == users

            async def one_round() -> list[tuple[str, int, str]]:
                """Three requests per user, all 150 at once: (expected patient, status, patient seen)."""
                seen: list[tuple[str, int, str]] = []

                async def request(browser: httpx.AsyncClient, patient: str) -> None:
                    response = await browser.get(f"{APP}/api/patient")
                    seen.append((patient, response.status_code, response.json().get("patient", "")))

                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        for browser, patient in zip(browsers, patients, strict=True):
                            tg.start_soon(request, browser, patient)
                return seen

            for expiry in range(3):  # fresh tokens, then twice expired during the run
                if expiry:
                    sandbox.clock.advance(301)
                seen = await one_round()
                assert len(seen) == 3 * users
                assert all(status == 200 for _, status, _ in seen), [s for s in seen if s[1] != 200][:3]
                assert all(got == expected for expected, _, got in seen)  # nobody sees another's data
                assert sandbox.stats["refresh_exchanges"] == expiry * users
                assert store.saves == Counter({sid: 1 + expiry for sid in sessions})  # once per user
        finally:
            for browser in browsers:
                await browser.aclose()
    assert sandbox.stats["code_exchanges"] == users
    assert sandbox.stats["bearer_failures"] == 0


# -- bad input --------------------------------------------------------------------------------------------------


def assert_asked_to_sign_in_again(response: httpx.Response, *secrets: str) -> None:
    assert response.status_code == 401
    assert "Please sign in again" in response.text
    assert "/login" in response.text
    assert f'{example.SESSION_COOKIE}=""' in response.headers["set-cookie"]
    for secret in secrets:
        assert secret not in response.text
    assert "Traceback" not in response.text


@pytest.mark.anyio
async def test_a_tampered_or_unknown_session_cookie_asks_to_sign_in_again(
    tmp_path: Path, app_key: SigningKey
) -> None:
    async with world("secret", tmp_path, app_key) as w:
        assert (await w.ehr_launch()).status_code == 200
        tokens = await stored_tokens(w)
        real = w.browser.cookies[example.SESSION_COOKIE]
        for forged in (real[:-1] + ("A" if real[-1] != "A" else "B"), "A" * 43, real + "x", "<script>"):
            w.browser.cookies.set(example.SESSION_COOKIE, forged, domain="smart-app.example")
            response = await w.browser.get(f"{APP}/", follow_redirects=False)
            assert_asked_to_sign_in_again(response, tokens.access_token, CAMILA)
            api = await w.browser.get(f"{APP}/api/patient")
            assert (api.status_code, api.json()) == (401, {"error": "sign_in"})
        w.browser.cookies.set(example.SESSION_COOKIE, real, domain="smart-app.example")
        assert_patient_page(await w.browser.get(f"{APP}/"), "Camila Maria Lopez")  # the real one still works


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_store_that_is_down_is_a_clear_page_that_shows_nothing_else(
    tmp_path: Path, app_key: SigningKey
) -> None:
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    store = RedisTokenSetStore(dead, cipher=TokenCipher(TokenCipher.generate_key()), timeout=1.0)
    try:
        async with world("secret", tmp_path, app_key, store=store) as w:
            w.browser.cookies.set(example.SESSION_COOKIE, "A" * 43, domain="smart-app.example")
            with anyio.fail_after(20):
                page = await w.browser.get(f"{APP}/")
                signing_in = await w.ehr_launch()
    finally:
        await store.aclose()
    assert page.status_code == 503
    assert "Sessions are unavailable" in page.text
    assert "sign in again" in page.text
    assert signing_in.status_code == 503
    assert "try again soon" in signing_in.text
    for response in (page, signing_in):
        assert "hunter2" not in response.text
        assert "redis" not in response.text.lower()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_wrong_encryption_key_asks_to_sign_in_again(
    tmp_path: Path, app_key: SigningKey, redis_db: str
) -> None:
    sandbox = EpicSandbox(seed=0, patients=0, token_lifetime=600)
    right, wrong = TokenCipher.generate_key(), TokenCipher.generate_key()
    async with world(
        "secret", tmp_path, app_key, sandbox=sandbox, settings={"redis_url": redis_db, "secret_key": right}
    ) as w:
        assert_patient_page(await w.ehr_launch(), "Camila Maria Lopez")
        tokens = await stored_tokens(w)
        cookies = w.browser.cookies
    # The same Redis, another worker started with a different key (a deployment mistake, or a rotated key).
    async with world(
        "secret", tmp_path, app_key, sandbox=sandbox, settings={"redis_url": redis_db, "secret_key": wrong}
    ) as other:
        other.browser.cookies = cookies
        response = await other.browser.get(f"{APP}/", follow_redirects=False)
    assert_asked_to_sign_in_again(response, tokens.access_token, tokens.refresh_token or "", right, wrong)
