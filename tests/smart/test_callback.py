"""The callback and the code exchange: state, denial, failed exchange, and each client authentication's shape."""

from __future__ import annotations

import base64
from urllib.parse import quote_plus

import httpx
import jwt as pyjwt
import pytest

from epic_fhir_async import (
    AuthorizationDenied,
    CodeExchangeError,
    ConfigurationError,
    LaunchError,
    LaunchStateError,
    TokenRequestError,
)
from epic_fhir_async.auth import SigningKey, public_jwks

from ..conftest import fast_sdk_retries
from .conftest import BASE, CLIENT_ID, REDIRECT, TOKEN_URL, FakeClock, FakeSmart, MakeLaunch, json_response


@pytest.mark.anyio
async def test_public_client_exchange_sends_code_verifier_and_client_id(
    make_launch: MakeLaunch, fake: FakeSmart
) -> None:
    async with make_launch() as launch:
        request = await launch.begin()
        tokens = await launch.complete(request.to_dict(), fake.authorize(request))
    (form,) = fake.token_forms
    assert form["grant_type"] == "authorization_code"
    assert form["code"].startswith("code-")
    assert len(form["code"]) > 600
    assert form["redirect_uri"] == REDIRECT
    assert form["code_verifier"] == request.code_verifier
    assert form["client_id"] == CLIENT_ID
    assert "authorization" not in fake.token_headers[0]
    assert "client_secret" not in form
    assert "client_assertion" not in form
    assert tokens.refresh_token is None  # Epic gives public clients no refresh token
    assert tokens.patient == "eq081-VQEgP8drUUqCWzHfw3"


@pytest.mark.anyio
async def test_confidential_client_with_a_secret_uses_basic_with_urlencoded_credentials(
    make_launch: MakeLaunch, fake: FakeSmart
) -> None:
    secret = "p@ss:word+/="  # characters that break naive Basic encoding
    fake.client_secret = secret
    async with make_launch(client_secret=secret) as launch:
        request = await launch.begin()
        tokens = await launch.complete(request, fake.authorize(request))
    (form,) = fake.token_forms
    assert "client_id" not in form
    assert "client_secret" not in form
    expected = base64.b64encode(f"{CLIENT_ID}:{quote_plus(secret, safe='')}".encode()).decode()
    assert fake.token_headers[0]["authorization"] == f"Basic {expected}"
    assert tokens.refresh_token is not None


@pytest.mark.anyio
async def test_confidential_client_with_a_key_sends_a_private_key_jwt(
    make_launch: MakeLaunch, fake: FakeSmart, client_key: SigningKey
) -> None:
    fake.client_jwks = public_jwks(client_key)
    async with make_launch(private_key=client_key) as launch:
        request = await launch.begin()
        await launch.complete(request, fake.authorize(request))
    (form,) = fake.token_forms
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    claims = pyjwt.decode(form["client_assertion"], options={"verify_signature": False})
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == TOKEN_URL
    assert "authorization" not in fake.token_headers[0]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["url", "query", "mapping", "lists"])
async def test_the_callback_may_be_a_url_a_query_string_or_a_mapping(
    make_launch: MakeLaunch, fake: FakeSmart, kind: str
) -> None:
    async with make_launch() as launch:
        request = await launch.begin()
        url = httpx.URL(fake.authorize(request))
        params = dict(url.params.items())
        callback: object = {
            "url": str(url),
            "query": url.query.decode(),
            "mapping": params,
            "lists": {k: [v] for k, v in params.items()},
        }[kind]
        tokens = await launch.complete(request, callback)  # type: ignore[arg-type]
    assert tokens.access_token.startswith("access-")


@pytest.mark.anyio
async def test_a_wrong_state_is_refused_before_any_token_request(
    make_launch: MakeLaunch, fake: FakeSmart
) -> None:
    async with make_launch() as launch:
        first = await launch.begin()
        second = await launch.begin()
        callback = fake.authorize(first)
        with pytest.raises(LaunchStateError, match="does not match"):
            await launch.complete(second, callback)  # the callback of another launch (CSRF / crossed tabs)
        with pytest.raises(LaunchStateError, match="no state"):
            await launch.complete(first, callback.split("&state=")[0])
    assert fake.token_forms == []


@pytest.mark.anyio
async def test_a_denied_authorization_raises_with_the_servers_words(
    make_launch: MakeLaunch, fake: FakeSmart
) -> None:
    async with make_launch() as launch:
        request = await launch.begin()
        with pytest.raises(AuthorizationDenied) as caught:
            await launch.complete(request, fake.authorize(request, deny=True))
        # an error redirect with someone else's state says nothing about this launch
        other = await launch.begin()
        with pytest.raises(LaunchStateError):
            await launch.complete(other, fake.authorize(request, deny=True))
    assert caught.value.error == "access_denied"
    assert caught.value.error_description == "User declined"
    assert "access_denied" in str(caught.value)
    assert fake.token_forms == []


@pytest.mark.anyio
async def test_an_old_launch_or_a_callback_without_code_is_refused(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock
) -> None:
    async with make_launch(max_age=300) as launch:
        request = await launch.begin()
        callback = fake.authorize(request)
        with pytest.raises(LaunchError, match="neither a code nor an error"):
            await launch.complete(request, {"state": request.state})
        clock.advance(301)
        with pytest.raises(LaunchStateError, match="start a new launch"):
            await launch.complete(request, callback)
    assert fake.token_forms == []


@pytest.mark.anyio
async def test_a_failed_exchange_is_a_code_exchange_error_with_a_hint(
    make_launch: MakeLaunch, fake: FakeSmart
) -> None:
    async with make_launch() as launch:
        request = await launch.begin()
        callback = fake.authorize(request)
        await launch.complete(request, callback)
        with pytest.raises(CodeExchangeError) as caught:
            await launch.complete(request, callback)  # the same code twice: Epic answers invalid_grant
    error = caught.value
    assert isinstance(error, TokenRequestError)
    assert error.error == "invalid_grant"
    assert error.status_code == 400
    assert error.hint is not None
    assert "single-use" in error.hint
    assert callback.split("code=")[1][:20] not in str(error)


@pytest.mark.anyio
async def test_a_wrong_verifier_fails_the_exchange(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    async with make_launch() as launch:
        request = await launch.begin()
        other = await launch.begin()
        callback = fake.authorize(request)
        forged = type(request)(**{**request.__dict__, "code_verifier": other.code_verifier})
        with pytest.raises(CodeExchangeError, match="invalid_grant"):
            await launch.complete(forged, callback)


@pytest.mark.anyio
async def test_a_refused_client_is_a_code_exchange_error_carrying_the_invalid_client_hint(
    make_launch: MakeLaunch, fake: FakeSmart, monkeypatch: pytest.MonkeyPatch
) -> None:

    fast_sdk_retries(monkeypatch, 0.0)
    fake.client_secret = "right"
    async with make_launch(client_secret="wrong") as launch:
        request = await launch.begin()
        with pytest.raises(CodeExchangeError) as caught:
            await launch.complete(request, fake.authorize(request))
    assert caught.value.error == "invalid_client"
    assert caught.value.hint is not None
    assert "sync" in caught.value.hint
    assert "wrong" not in str(caught.value)


@pytest.mark.anyio
async def test_a_request_from_another_launch_configuration_is_refused(make_launch: MakeLaunch) -> None:
    async with make_launch() as launch:
        request = await launch.begin()
    async with make_launch(client_id="someone-else") as other:
        with pytest.raises(ConfigurationError, match="another SmartLaunch"):
            await other.complete(request, {"state": request.state, "code": "c"})


@pytest.mark.anyio
async def test_the_token_endpoint_is_the_discovered_one(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    fake.scripted_token.append(json_response(200, {"access_token": "a", "token_type": "bearer"}))
    async with make_launch(scopes="patient/Patient.read") as launch:
        request = await launch.begin()
        tokens = await launch.complete(request, fake.authorize(request))
    assert tokens.token_url == TOKEN_URL
    assert tokens.fhir_base == BASE
    assert tokens.id_token is None
    assert tokens.id_token_claims is None
    assert tokens.fhir_user is None
