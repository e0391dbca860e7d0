"""Token errors become TokenRequestError with Epic hints; a bare 400 is retried once, never in a loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

from epic_fhir_async import RequestTimeout, TokenRequestError, TransportError
from epic_fhir_async._http import HTTPSession
from epic_fhir_async.auth import BackendServicesAuth, ClientSecretAuth, SigningKey

if TYPE_CHECKING:
    from tests.auth.conftest import Connect
    from tests.conftest import FakeEpic

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_retry_delay")]


def _error(status: int, body: object | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    from epic_fhir_async import _json

    content = b"" if body is None else _json.dumps(body)
    return httpx.Response(
        status, content=content, headers={"Content-Type": "application/json", **(headers or {})}
    )


@pytest.mark.parametrize(
    ("error", "hint_words"),
    [
        ("invalid_client", ["sync", "non-production", "aud", "clock", "kid"]),
        ("unauthorized_client", ["mapped", "ECSA"]),
        ("invalid_scope", ["Incoming APIs"]),
        ("invalid_request", ["form-encoded"]),
        ("invalid_grant", ["refresh token"]),
    ],
)
async def test_each_oauth_error_maps_to_a_typed_error_with_a_hint(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey, error: str, hint_words: list[str]
) -> None:
    fake.scripted = [_error(400, {"error": error, "error_description": None})] * 3
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth):
        with pytest.raises(TokenRequestError) as info:
            await auth.get_token()
    exc = info.value
    assert exc.error == error
    assert exc.error_description is None
    assert exc.status_code == 400
    assert exc.hint is not None
    for word in hint_words:
        assert word in exc.hint
    assert "Hint:" in str(exc)
    # Epic's flake looks exactly like its credentials error, so only that one is retried (once).
    assert fake.token_requests == (2 if error == "invalid_client" else 1)


async def test_invalid_client_with_a_description_is_not_retried_the_first_time(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    fake.scripted = [_error(400, {"error": "invalid_client", "error_description": "unknown kid"})] * 2
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth):
        with pytest.raises(TokenRequestError, match="unknown kid"):
            await auth.get_token()
    assert fake.token_requests == 1


async def test_invalid_client_hint_names_the_exact_token_url(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    fake.scripted = [_error(400, {"error": "invalid_client", "error_description": None})] * 2
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth):
        with pytest.raises(TokenRequestError) as info:
            await auth.get_token()
    assert info.value.hint is not None
    assert fake.token_url in info.value.hint


async def test_epics_flake_on_the_first_request_is_retried_once(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    # The sandbox's (and Epic's) flake is a 400 invalid_client with a null description.
    fake.scripted = [_error(400, {"error": "invalid_client", "error_description": None})]
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth):
        token = await auth.get_token()
    assert token.value == fake.issued[0]
    assert fake.token_requests == 2


async def test_error_description_is_kept(fake: FakeEpic, connect: Connect, rsa_key: SigningKey) -> None:
    fake.scripted = [_error(400, {"error": "invalid_scope", "error_description": "scope x is unknown"})]
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth):
        with pytest.raises(TokenRequestError, match="scope x is unknown") as info:
            await auth.get_token()
    assert info.value.error_description == "scope x is unknown"


@pytest.mark.parametrize("body", [None, {"message": "?"}, "not json"])
async def test_a_bare_400_is_retried_once_with_a_fresh_assertion(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey, body: object
) -> None:
    bare = httpx.Response(400, content=body.encode()) if isinstance(body, str) else _error(400, body)
    fake.scripted = [bare]
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth):
        token = await auth.get_token()
    assert token.value == fake.issued[0]
    assert fake.token_requests == 2
    assert fake.forms[0]["client_assertion"] != fake.forms[1]["client_assertion"]


async def test_a_bare_400_twice_raises_after_exactly_two_requests(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    fake.scripted = [_error(400), _error(400), _error(400)]
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth):
        with pytest.raises(TokenRequestError) as info:
            await auth.get_token()
    assert fake.token_requests == 2
    assert info.value.error is None
    assert info.value.hint is not None
    assert "bare 400" in info.value.hint


async def test_invalid_client_after_an_earlier_success_is_retried_once(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth):
        await auth.get_token()
        fake.scripted = [_error(400, {"error": "invalid_client", "error_description": "described"})]
        auth.invalidate()
        await auth.get_token()
        assert fake.token_requests == 3
        fake.scripted = [_error(400, {"error": "invalid_client", "error_description": "described"})] * 2
        auth.invalidate()
        with pytest.raises(TokenRequestError):
            await auth.get_token()
    assert fake.token_requests == 5


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_server_errors_are_retried_once(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey, status: int
) -> None:
    fake.scripted = [_error(status, headers={"Retry-After": "0"}), _error(status)]
    auth = BackendServicesAuth(fake.client_id, rsa_key, token_url=fake.token_url)
    async with connect(auth):
        with pytest.raises(TokenRequestError) as info:
            await auth.get_token()
    assert info.value.status_code == status
    assert fake.token_requests == 2


async def test_connection_errors_become_transport_errors(rsa_key: SigningKey) -> None:
    calls = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused", request=request)

    auth = BackendServicesAuth("c", rsa_key, token_url="https://t.example/oauth2/token")
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        auth.bind(HTTPSession("https://t.example/api/FHIR/R4", http_client=http))
        with pytest.raises(TransportError) as info:
            await auth.get_token()
    assert calls == 2
    assert info.value.method == "POST"


async def test_timeouts_become_request_timeouts(rsa_key: SigningKey) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    auth = BackendServicesAuth("c", rsa_key, token_url="https://t.example/oauth2/token")
    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as http:
        auth.bind(HTTPSession("https://t.example/api/FHIR/R4", http_client=http))
        with pytest.raises(RequestTimeout):
            await auth.get_token()


async def test_a_200_that_is_not_json_is_a_token_error(fake: FakeEpic, connect: Connect) -> None:
    fake.scripted = [httpx.Response(200, text="<html>login</html>")]
    auth = ClientSecretAuth("c", "s", token_url=fake.token_url)
    async with connect(auth):
        with pytest.raises(TokenRequestError, match="not JSON"):
            await auth.get_token()


async def test_errors_never_contain_the_assertion_or_secret(
    fake: FakeEpic, connect: Connect, rsa_key: SigningKey
) -> None:
    fake.scripted = [_error(400, {"error": "invalid_client"})] * 2
    auth = ClientSecretAuth("c", "super-secret-value", token_url=fake.token_url + "?x=patient-123")
    async with connect(auth):
        with pytest.raises(TokenRequestError) as info:
            await auth.get_token()
    text = f"{info.value} {info.value!r} {info.value.hint}"
    assert "super-secret-value" not in text
    assert "patient-123" not in text
