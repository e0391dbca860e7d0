"""examples/fastapi_app.py end to end: a browser follows redirects between the FastAPI app and the sandbox.

Both ASGI apps run in-process: the browser's transport routes the app's host to FastAPI and the sandbox's host
to the sandbox; the app reaches the sandbox through the sandbox's transport.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from epic_fhir_async.auth import SigningKey, generate_private_key, private_key_pem, public_jwks
from epic_fhir_async.sandbox import EpicSandbox

APP = "https://smart-app.example"
REDIRECT = f"{APP}/callback"
CAMILA = "erXuFYUfucBZaryVksYEcMg3"
SECRET = "web-app-secret"


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
async def world(kind: str, tmp_path: Path, app_key: SigningKey) -> AsyncIterator[World]:
    sandbox = EpicSandbox(seed=0, patients=0, token_lifetime=600)
    settings: dict[str, Any] = {}
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
    )
    router = example.HostRouter(
        {"smart-app.example": httpx.ASGITransport(app=app), "127.0.0.1:8765": sandbox.transport()}
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=router, follow_redirects=True) as browser,
    ):
        yield World(sandbox, app, browser)


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
        response = await w.ehr_launch()
        before_login = response.history[0].headers["set-cookie"]
        after_login = response.history[-1].headers["set-cookie"]
        sessions = w.app.state.sessions._sessions
        (session,) = sessions.values()
    for header in (before_login, after_login):
        assert "HttpOnly" in header
        assert "Secure" in header
        assert "samesite=lax" in header.lower()
    assert before_login.split(";")[0] != after_login.split(";")[0]  # no session fixation
    assert len(after_login.split(";")[0].split("=", 1)[1]) >= 43
    token = session.tokens["access_token"]
    assert token not in response.text
    assert token not in after_login
    assert SECRET not in response.text


@pytest.mark.anyio
async def test_an_expired_token_is_refreshed_and_the_session_store_updated(
    tmp_path: Path, app_key: SigningKey
) -> None:
    async with world("secret", tmp_path, app_key) as w:
        assert (await w.ehr_launch()).status_code == 200
        (session,) = w.app.state.sessions._sessions.values()
        first = session.tokens["access_token"]
        w.sandbox.clock.advance(601)  # the sandbox expires the token under the app's feet
        before = w.sandbox.stats["token_requests"]
        response = await w.browser.get(f"{APP}/")
        assert_patient_page(response, "Camila Maria Lopez")
        assert w.sandbox.stats["token_requests"] - before == 1
        assert session.tokens["access_token"] != first  # on_refresh saved the new tokens


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
