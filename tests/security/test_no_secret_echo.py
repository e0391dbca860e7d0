"""No secret of ours in a message, repr, exception chain or log record, even when the server reflects it
(SECURITY.md promise 4).

A hostile server echoes what it received: the bearer token in the reason phrase, an OperationOutcome, the
``WWW-Authenticate`` challenge or the Content-Type; the client secret, the signed assertion or the Basic
credentials in a token error's description. The SDK masks its own secrets (the credentials the request
carried, the auth's current tokens) in everything it builds from such an answer. A ``token_type`` that would
break the ``Authorization`` header is refused (h11 quoted the header, token included, in an exception the SDK
chained), and an httpx exception whose text holds a secret is scrubbed before it is chained.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs

import httpx
import pytest

from epic_fhir_async import (
    EpicAuth,
    EpicFHIRClient,
    FHIRStatusError,
    RetryPolicy,
    StaticTokenAuth,
    TokenRequestError,
    TransportError,
    UnexpectedContentError,
)
from epic_fhir_async.auth import BackendServicesAuth, ClientSecretAuth, generate_private_key
from tests.http.rawserver import Connection, RawRequest, head, raw_server

from ..conftest import fast_sdk_retries

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"
TOKEN_URL = "https://fhir.example.org/oauth2/token"
TOKEN = "tok-" + "Secret0" * 6
SECRET = "client-s3cret-" + "K" * 20


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _everything(exc: BaseException) -> str:
    """Every text a log, a tracker or a debugger shows of ``exc``: str, repr, its chain, its attributes."""
    texts = ["".join(traceback.format_exception(exc))]
    for link in _chain(exc):
        texts += [str(link), repr(link), repr(link.args)]
        texts += [repr(value) for value in vars(link).values()]
    outcome = getattr(exc, "operation_outcome", None)
    if outcome is not None:
        texts += [str(outcome), repr(outcome), repr(outcome.raw)]
        texts += [f"{i.diagnostics} {i.details_text} {i.location} {i.expression}" for i in outcome.issues]
    return "\n".join(texts)


def _client(handler: Callable[[httpx.Request], httpx.Response], auth: EpicAuth) -> EpicFHIRClient:
    return EpicFHIRClient(
        BASE, auth=auth, transport=httpx.MockTransport(handler), retry=RetryPolicy(max_attempts=1)
    )


def _echo_everywhere(request: httpx.Request, status: int) -> httpx.Response:
    """Everything a server controls, set to what the request carried."""
    echoed = request.headers.get("authorization", "")
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "security",
                "details": {
                    "coding": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369", "code": "59008"}],
                    "text": f"you sent {echoed}",
                },
                "diagnostics": f"Authorization: {echoed}",
                "expression": [echoed],
            }
        ],
    }
    return httpx.Response(
        status,
        json=outcome,
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{echoed}"'},
        extensions={"reason_phrase": f"Rejected {echoed}".encode()},
    )


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500])
async def test_a_reflected_bearer_token_is_masked_in_the_error(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with _client(lambda r: _echo_everywhere(r, status), StaticTokenAuth(TOKEN)) as client:
        with pytest.raises(FHIRStatusError) as info:
            await client.read("Patient", "p")
    assert "<masked>" in str(info.value) or status in (401, 403)  # 401/403 explain from the challenge
    assert TOKEN not in _everything(info.value)
    assert info.value.www_authenticate["error_description"] == "Bearer <masked>"
    assert TOKEN not in "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith("epic_fhir_async")
    )


async def test_a_reflected_token_in_the_content_type_is_masked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html/>", headers={"Content-Type": f"text/{TOKEN}"})

    async with _client(handler, StaticTokenAuth(TOKEN)) as client:
        with pytest.raises(UnexpectedContentError) as info:
            await client.read("Patient", "p")
    assert TOKEN.lower() not in _everything(info.value).lower()  # media types are shown lower-cased


async def test_the_current_token_of_a_token_grant_is_masked_too() -> None:
    # The token the auth holds now (not only the one the request carried) is masked: a server may echo a
    # token it got from another request.
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(
                200, json={"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600}
            )
        return httpx.Response(
            400,
            json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": TOKEN}]},
            headers={"Content-Type": "application/fhir+json"},
        )

    auth = ClientSecretAuth("app", SECRET, token_url=TOKEN_URL)
    async with _client(handler, auth) as client:
        with pytest.raises(FHIRStatusError) as info:
            await client.read("Patient", "p")
    assert TOKEN not in _everything(info.value)


def _token_error_echo(request: httpx.Request) -> httpx.Response:
    form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
    sent = " ".join([request.headers.get("authorization", ""), *form.values()])
    return httpx.Response(400, json={"error": "invalid_client", "error_description": f"rejected: {sent}"})


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_a_token_endpoint_echoing_the_client_secret_gets_it_masked(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_sdk_retries(monkeypatch, 0.0)
    auth = ClientSecretAuth("app", SECRET, method=method, token_url=TOKEN_URL)  # type: ignore[arg-type]
    async with _client(_token_error_echo, auth):
        with pytest.raises(TokenRequestError) as info:
            await auth.get_token()
    assert "rejected:" in str(info.value)
    assert SECRET not in _everything(info.value)
    assert "Basic " not in str(info.value) or "Basic <masked>" in str(info.value)


async def test_a_token_endpoint_echoing_the_assertion_gets_it_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_sdk_retries(monkeypatch, 0.0)
    assertions: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assertion = parse_qs(request.content.decode())["client_assertion"][0]
        assertions.append(assertion)
        # The signature first: the SDK keeps 300 characters of a description, and a whole assertion is longer.
        signature = assertion.rsplit(".", 1)[1]
        return httpx.Response(
            400, json={"error": "invalid_client", "error_description": f"{signature} {assertion}"}
        )

    auth = BackendServicesAuth("app", generate_private_key("ES256"), token_url=TOKEN_URL)
    async with _client(handler, auth):
        with pytest.raises(TokenRequestError) as info:
            await auth.get_token()
    text = _everything(info.value)
    assert assertions
    assert not [a for a in assertions if a in text or a.rsplit(".", 1)[1] in text]


@pytest.mark.parametrize("token_type", ["Bearer\r\nX-Injected: 1", "Bearer x", "Bé", "\x00"])
async def test_a_token_type_that_cannot_go_in_a_header_is_refused(token_type: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": TOKEN, "token_type": token_type, "expires_in": 60})

    auth = ClientSecretAuth("app", SECRET, token_url=TOKEN_URL)
    async with _client(handler, auth):
        with pytest.raises(TokenRequestError, match="token_type that cannot go in a header") as info:
            await auth.get_token()
    assert TOKEN not in _everything(info.value)


async def test_a_poisoned_token_type_never_reaches_the_wire(caplog: pytest.LogCaptureFixture) -> None:
    # Over a real socket: before the check, h11 refused the header and quoted it, token included, in an error
    # the SDK chained and in httpcore's DEBUG log.
    caplog.set_level(logging.DEBUG)

    async def respond(conn: Connection, request: RawRequest) -> None:
        body = b'{"access_token": "%s", "token_type": "Bearer\\r\\nX: 1", "expires_in": 60}' % TOKEN.encode()
        await conn.send(
            head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}) + body
        )

    async with raw_server(respond) as server:
        auth = ClientSecretAuth("app", SECRET, token_url=server.url + "/oauth2/token")
        async with EpicFHIRClient(server.url + "/r4", auth=auth, retry=RetryPolicy(max_attempts=1)) as client:
            with pytest.raises(TokenRequestError) as info:
                await client.read("Patient", "p")
    assert len(server.requests) == 1  # the token request; the FHIR request was never sent
    assert TOKEN not in _everything(info.value)
    assert TOKEN not in "\n".join(record.getMessage() for record in caplog.records)


async def test_an_httpx_error_quoting_a_secret_is_scrubbed_before_it_is_chained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Defence in depth: whatever makes h11 refuse a header that holds a secret, the TransportError's chain
    # (shown in tracebacks and error trackers) carries it masked.
    caplog.set_level(logging.DEBUG, logger="epic_fhir_async")

    async def respond(conn: Connection, request: RawRequest) -> None:
        await conn.send(head(200, {"Content-Type": "application/fhir+json", "Content-Length": "2"}) + b"{}")

    async with raw_server(respond) as server:
        client = EpicFHIRClient(
            server.url + "/r4", auth=StaticTokenAuth(TOKEN), retry=RetryPolicy(max_attempts=1)
        )
        async with client:
            with pytest.raises(TransportError) as info:
                await client.request("GET", "Patient/p", headers={"X-Echo": f"{TOKEN}\r\nX: 1"})
    text = _everything(info.value)
    assert "LocalProtocolError" in text
    assert "<masked>" in text
    assert TOKEN not in text
    assert TOKEN not in "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith("epic_fhir_async")
    )


def test_scrubbing_masks_longest_secrets_first_and_ignores_short_values() -> None:
    from epic_fhir_async._http import request_secrets, scrub

    request = httpx.Request(
        "POST",
        TOKEN_URL,
        headers={"Authorization": "Basic YXBwOmNsaWVudC1zM2NyZXQtS0tLS0tLS0tLS0tLS0tLS0tLS0tLSw=="},
        data={"client_secret": SECRET, "grant_type": "client_credentials", "code": "short"},
    )
    secrets = request_secrets(request, [TOKEN, "abc"])
    assert SECRET in secrets
    assert TOKEN in secrets
    assert "short" not in secrets  # shorter than any credential: masking it would mask words
    assert "abc" not in secrets
    assert "client_credentials" not in secrets  # not a secret field
    assert scrub(f"x {SECRET} y {TOKEN}", secrets) == "x <masked> y <masked>"
