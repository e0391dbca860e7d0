"""The SDK's SMART launch against the sandbox emulator: EHR and standalone, public and confidential clients.

The browser's part is one GET of the authorize URL (the sandbox's auto-login answers 302 to the app). The
last tests show the rules are enforced on both sides: what the SDK sends (aud, S256, state) and what the
sandbox refuses when a request breaks them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from epic_fhir_async import (
    AuthorizationDenied,
    CodeExchangeError,
    EpicFHIRClient,
    LaunchStateError,
    ReauthorizationRequired,
    SmartLaunch,
    SmartTokenSet,
)
from epic_fhir_async.auth import AuthorizationRequest, SigningKey, generate_private_key, public_jwks
from epic_fhir_async.sandbox import EpicSandbox, SandboxClock

NOW = 1_780_000_000.0
CAMILA = "erXuFYUfucBZaryVksYEcMg3"
DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
DERRICK_ENCOUNTER = "e6kBx6PwnxIv.5kCifScsWg3"
REDIRECT = "https://app.example.org/callback"
SCOPES = "openid fhirUser launch/patient patient/Patient.read patient/Observation.read offline_access"
SECRET = "s3cret:+/ value"


@pytest.fixture(scope="module")
def app_key() -> SigningKey:
    return generate_private_key("RS384")


@pytest.fixture
def sb(app_key: SigningKey) -> EpicSandbox:
    sandbox = EpicSandbox(seed=0, patients=2, clock=SandboxClock(frozen_at=NOW), token_lifetime=600)
    sandbox.register_app("public-app", redirect_uris=[REDIRECT])
    sandbox.register_app("secret-app", redirect_uris=[REDIRECT], client_secret=SECRET, persistent_access=True)
    sandbox.register_app(
        "jwt-app", redirect_uris=[REDIRECT], jwks=public_jwks(app_key), persistent_access=True
    )
    return sandbox


CLIENTS: dict[str, dict[str, Any]] = {
    "public": {"client_id": "public-app"},
    "secret": {"client_id": "secret-app", "client_secret": SECRET},
    "jwt": {"client_id": "jwt-app"},
}


@asynccontextmanager
async def smart(
    sb: EpicSandbox, app_key: SigningKey, kind: str, *, clock: Callable[[], float] | None = None
) -> AsyncIterator[tuple[SmartLaunch, httpx.AsyncClient]]:
    options = dict(CLIENTS[kind])
    if kind == "jwt":
        options["private_key"] = app_key
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        yield (
            SmartLaunch(
                sb.base_url,
                redirect_uri=REDIRECT,
                scopes=SCOPES,
                http_client=http,
                clock=clock or sb.clock.now,
                wall_clock=sb.clock.now,
                **options,
            ),
            http,
        )


async def browse(http: httpx.AsyncClient, request: AuthorizationRequest) -> str:
    """The browser: follow the authorize URL to the 302 back to the app; return the callback URL."""
    response = await http.get(request.url)
    assert response.status_code == 302, response.text[:300]
    location: str = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return location


async def ehr_launch(sb: EpicSandbox, launch: SmartLaunch, http: httpx.AsyncClient) -> SmartTokenSet:
    token = sb.mint_launch(DERRICK, encounter=DERRICK_ENCOUNTER, context={"loginDepartment": "1234"})
    request = await launch.begin(launch=token, iss=sb.base_url)
    return await launch.complete(request.to_dict(), await browse(http, request))


async def standalone(launch: SmartLaunch, http: httpx.AsyncClient) -> SmartTokenSet:
    request = await launch.begin()
    return await launch.complete(request.to_dict(), await browse(http, request))


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["public", "secret", "jwt"])
async def test_ehr_launch_end_to_end(sb: EpicSandbox, app_key: SigningKey, kind: str) -> None:
    async with smart(sb, app_key, kind) as (launch, http):
        tokens = await ehr_launch(sb, launch, http)
        assert tokens.patient == DERRICK
        assert tokens.encounter == DERRICK_ENCOUNTER
        assert tokens.smart_style_url is not None
        assert tokens.smart_style_url.startswith(sb.origin)
        assert tokens.need_patient_banner is False  # Hyperspace shows its own banner
        assert tokens.extra["loginDepartment"] == "1234"
        assert "__epic.dstu2.patient" in tokens.extra
        assert tokens.id_token_claims is not None
        assert tokens.fhir_user is not None
        assert tokens.fhir_user.split("/")[-2] == "Practitioner"
        claims = tokens.id_token_claims
        assert claims["iss"] == sb.oauth_url
        assert claims["aud"] == CLIENTS[kind]["client_id"]
        assert claims["exp"] - claims["iat"] == 300  # Epic's id_tokens live five minutes
        assert tokens.can_refresh is (kind != "public")
        async with EpicFHIRClient(
            sb.base_url, auth=launch.auth(tokens), http_client=http, retry=False
        ) as client:
            patient = await client.read("Patient", tokens.patient)
    assert patient["id"] == DERRICK


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["public", "secret", "jwt"])
async def test_standalone_launch_end_to_end(sb: EpicSandbox, app_key: SigningKey, kind: str) -> None:
    async with smart(sb, app_key, kind) as (launch, http):
        tokens = await standalone(launch, http)
        assert tokens.patient == CAMILA  # the sandbox's MyChart login for launch/patient
        assert tokens.need_patient_banner is True
        async with EpicFHIRClient(
            sb.base_url, auth=launch.auth(tokens), http_client=http, retry=False
        ) as client:
            vitals = [
                o async for o in client.search("Observation", patient=tokens.patient, category="vital-signs")
            ]
    assert vitals
    assert all(o["resourceType"] == "Observation" for o in vitals)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["secret", "jwt"])
async def test_a_token_expiring_during_a_request_is_refreshed_without_offline_access_in_scope(
    sb: EpicSandbox, app_key: SigningKey, kind: str
) -> None:
    app_clock = SandboxClock(frozen_at=NOW)  # the app's clock lags the server's: it thinks the token is fresh
    async with smart(sb, app_key, kind, clock=app_clock.now) as (launch, http):
        tokens = await ehr_launch(sb, launch, http)
        assert "offline_access" not in tokens.scopes  # Epic does not echo it
        saved: list[SmartTokenSet] = []
        auth = launch.auth(tokens, on_refresh=saved.append)
        async with EpicFHIRClient(sb.base_url, auth=auth, http_client=http, retry=False) as client:
            await client.read("Patient", DERRICK)
            before = sb.stats["token_requests"]
            sb.clock.advance(601)  # the server expires the token; the request gets 401, refresh, replay
            assert (await client.read("Patient", DERRICK))["id"] == DERRICK
    assert sb.stats["token_requests"] - before == 1
    assert len(saved) == 1
    assert saved[0].access_token != tokens.access_token
    assert saved[0].patient == DERRICK  # the launch context survives the refresh


@pytest.mark.anyio
async def test_concurrent_requests_share_one_refresh(sb: EpicSandbox, app_key: SigningKey) -> None:
    async with smart(sb, app_key, "secret") as (launch, http):
        tokens = await ehr_launch(sb, launch, http)
        async with EpicFHIRClient(
            sb.base_url, auth=launch.auth(tokens), http_client=http, retry=False
        ) as client:
            sb.clock.advance(700)
            before = sb.stats["token_requests"]
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(client.read, "Patient", DERRICK)
    assert sb.stats["token_requests"] - before == 1


@pytest.mark.anyio
async def test_a_public_client_must_launch_again_when_its_token_expires(
    sb: EpicSandbox, app_key: SigningKey
) -> None:
    async with smart(sb, app_key, "public") as (launch, http):
        tokens = await ehr_launch(sb, launch, http)
        async with EpicFHIRClient(
            sb.base_url, auth=launch.auth(tokens), http_client=http, retry=False
        ) as client:
            sb.clock.advance(601)
            with pytest.raises(ReauthorizationRequired):
                await client.read("Patient", DERRICK)


@pytest.mark.anyio
async def test_a_saved_token_set_restores_and_refreshes(sb: EpicSandbox, app_key: SigningKey) -> None:
    async with smart(sb, app_key, "jwt") as (launch, http):
        saved = (await ehr_launch(sb, launch, http)).to_dict()
        sb.clock.advance(700)
        auth = launch.auth(SmartTokenSet.from_dict(saved))
        async with EpicFHIRClient(sb.base_url, auth=auth, http_client=http, retry=False) as client:
            await client.read("Patient", DERRICK)
    assert auth.token_set.access_token != saved["access_token"]


@pytest.mark.anyio
async def test_a_denied_authorization(sb: EpicSandbox, app_key: SigningKey) -> None:
    sb.smart.deny_next = True
    async with smart(sb, app_key, "public") as (launch, http):
        request = await launch.begin()
        with pytest.raises(AuthorizationDenied) as caught:
            await launch.complete(request, await browse(http, request))
    assert caught.value.error == "access_denied"


@pytest.mark.anyio
async def test_state_is_enforced(sb: EpicSandbox, app_key: SigningKey) -> None:
    async with smart(sb, app_key, "public") as (launch, http):
        victim = await launch.begin()
        attacker_callback = await browse(http, await launch.begin())  # the attacker's own code
        before = sb.stats["token_requests"]
        with pytest.raises(LaunchStateError):
            await launch.complete(victim, attacker_callback)
    assert sb.stats["token_requests"] == before  # refused before the code reached the token endpoint


@pytest.mark.anyio
async def test_pkce_is_enforced(sb: EpicSandbox, app_key: SigningKey) -> None:
    async with smart(sb, app_key, "public") as (launch, http):
        request = await launch.begin()
        callback = await browse(http, request)
        forged = AuthorizationRequest.from_dict(
            {**request.to_dict(), "code_verifier": (await launch.begin()).code_verifier}
        )
        with pytest.raises(CodeExchangeError) as caught:
            await launch.complete(forged, callback)  # a stolen code without its verifier is useless
        assert caught.value.error == "invalid_grant"
        # plain is refused by the server; the SDK never sends it
        plain = request.url.replace("code_challenge_method=S256", "code_challenge_method=plain")
        refused = await http.get(plain)
    assert refused.status_code == 400
    assert "text/html" in refused.headers["content-type"]
    assert sb.oauth.failures[-1] == "unsupported_code_challenge_method"


@pytest.mark.anyio
async def test_aud_is_enforced(sb: EpicSandbox, app_key: SigningKey) -> None:
    async with smart(sb, app_key, "public") as (launch, http):
        request = await launch.begin()
        assert request.params["aud"] == sb.base_url
        params = request.params
        wrong = await http.get(request.authorization_endpoint, params={**params, "aud": sb.base_url + "x"})
        missing = await http.get(
            request.authorization_endpoint, params={k: v for k, v in params.items() if k != "aud"}
        )
        good = await http.get(request.url)
    assert wrong.status_code == 400
    assert missing.status_code == 400
    assert good.status_code == 302
    assert {"invalid_aud", "missing_aud"} <= set(sb.oauth.failures)


@pytest.mark.anyio
async def test_an_ehr_launch_may_post_its_parameters(sb: EpicSandbox, app_key: SigningKey) -> None:
    # Epic accepts the authorize request as a form POST for EHR launches (launch tokens can be long).
    async with smart(sb, app_key, "public") as (launch, http):
        request = await launch.begin(launch=sb.mint_launch(DERRICK), iss=sb.base_url)
        response = await http.post(request.authorization_endpoint, data=request.params)
        assert response.status_code == 302
        tokens = await launch.complete(request, response.headers["location"])
    assert tokens.patient == DERRICK
