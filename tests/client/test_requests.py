"""EpicFHIRClient against httpx.MockTransport and respx: headers, content checks, errors, origins, ownership."""

from __future__ import annotations

import base64
import logging

import httpx
import pytest
import respx

from epic_fhir_async import (
    BadRequest,
    ConfigurationError,
    EpicFHIRClient,
    Forbidden,
    NotFound,
    RateLimited,
    RequestTimeout,
    RetryPolicy,
    ServerError,
    StaticTokenAuth,
    TransportError,
    Unauthorized,
    UnexpectedContentError,
    UnsafeURLError,
    __version__,
)

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/interconnect-fhir-oauth/api/FHIR/R4"
TOKEN = "tok-SECRET-abc"
PID = "erXuFYUfucBZaryVksYEcMg3"
JSON_CT = {"Content-Type": "application/fhir+json; charset=utf-8"}


def outcome(code: str, diagnostics: str) -> dict[str, object]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "fatal",
                "code": "not-found",
                "details": {
                    "coding": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369", "code": code}]
                },
                "diagnostics": diagnostics,
            }
        ],
    }


def client_for(handler: object, **kwargs: object) -> EpicFHIRClient:
    return EpicFHIRClient(
        BASE,
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]
        auth=StaticTokenAuth(TOKEN),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_read_sends_accept_user_agent_epic_client_id_and_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"resourceType": "Patient", "id": PID}, headers=JSON_CT)

    async with client_for(handler, epic_client_id="abc-client") as client:
        patient = await client.read("Patient", PID)
    assert patient == {"resourceType": "Patient", "id": PID}
    request = seen[0]
    assert str(request.url) == f"{BASE}/Patient/{PID}"
    assert request.headers["Accept"] == "application/fhir+json"
    assert request.headers["User-Agent"] == f"epic-fhir-async/{__version__}"
    assert request.headers["Epic-Client-ID"] == "abc-client"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_xml_and_html_answers_raise_unexpected_content() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return httpx.Response(
                200,
                content=b"<CapabilityStatement/>",
                headers={"Content-Type": "application/xml; charset=utf-8"},
            )
        html = b"<html><title>404 - File or directory not found.</title></html>"
        return httpx.Response(200, content=html, headers={"Content-Type": "text/html; charset=iso-8859-1"})

    async with client_for(handler) as client:
        with pytest.raises(UnexpectedContentError, match="got XML") as xml:
            await client.capabilities()
        assert xml.value.content_type == "application/xml"
        with pytest.raises(UnexpectedContentError, match="got HTML"):
            await client.read("Patient", PID)


async def test_html_404_is_unexpected_content_and_text_404_is_not_found() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("text"):
            return httpx.Response(404, content=b"nope", headers={"Content-Type": "text/plain"})
        return httpx.Response(404, content=b"<html>404</html>", headers={"Content-Type": "text/html"})

    async with client_for(handler) as client:
        with pytest.raises(UnexpectedContentError, match="IIS 404") as info:
            await client.request("GET", "Foo/bar")
        assert info.value.status_code == 404
        with pytest.raises(NotFound, match="non-FHIR body"):
            await client.request("GET", "Foo/text")


async def test_a_gateway_html_page_on_5xx_or_429_keeps_the_status_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        status = 429 if request.url.path.endswith("busy") else 502
        return httpx.Response(
            status, content=b"<html>Bad Gateway</html>", headers={"Content-Type": "text/html"}
        )

    async with client_for(handler, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(ServerError) as info:
            await client.request("GET", "Patient/x")
        assert info.value.status_code == 502
        with pytest.raises(RateLimited):
            await client.request("GET", "Patient/busy")


async def test_status_errors_are_typed_and_free_of_secrets() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("Patient/nope"):
            return httpx.Response(404, json=outcome("59008", "Invalid FHIR ID provided"), headers=JSON_CT)
        if request.url.path.endswith("Observation"):
            return httpx.Response(400, json=outcome("59108", "Required element missing"), headers=JSON_CT)
        if request.url.path.endswith("Condition"):
            challenge = 'Bearer error="insufficient_scope", error_description="nope"'
            return httpx.Response(403, headers={"WWW-Authenticate": challenge})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    async with client_for(handler) as client:
        with pytest.raises(NotFound) as nf:
            await client.read("Patient", "nope")
        assert nf.value.operation_outcome is not None
        assert nf.value.operation_outcome.has_epic_code("59008")
        with pytest.raises(BadRequest) as br:
            await client.request("GET", "Observation", params={"patient": "SECRET-PATIENT"})
        with pytest.raises(Forbidden, match="insufficient_scope"):
            await client.request("GET", "Condition")
        with pytest.raises(Unauthorized, match="invalid_token") as un:
            await client.request("GET", "Encounter")
    for error in (nf.value, br.value, un.value):
        text = str(error) + repr(error)
        assert TOKEN not in text
        assert "SECRET-PATIENT" not in text
        assert "?" not in text


async def test_transport_errors_and_timeouts_are_typed_without_query() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "slow" in request.url.path:
            raise httpx.ReadTimeout("timed out", request=request)
        raise httpx.ConnectError("refused", request=request)

    async with client_for(handler, retry=None) as client:
        client.http._transport = httpx.MockTransport(handler)  # no retry waits in this test
        with pytest.raises(RequestTimeout, match="ReadTimeout during GET") as timeout:
            await client.request("GET", "slow", params={"patient": "SECRET-PATIENT"})
        with pytest.raises(TransportError, match="ConnectError during GET") as conn:
            await client.request("GET", "down", params={"patient": "SECRET-PATIENT"})
    assert "SECRET-PATIENT" not in str(timeout.value) + str(conn.value)


async def test_plain_http_refused_except_loopback_or_own_client() -> None:
    with pytest.raises(ConfigurationError, match="plain http"):
        EpicFHIRClient("http://fhir.example.org/R4")
    for base in ("http://127.0.0.1:8765/R4", "http://localhost/R4", "http://[::1]:80/R4"):
        async with EpicFHIRClient(base) as client:
            assert client.base_url == httpx.URL(base)
    async with (
        httpx.AsyncClient() as own,
        EpicFHIRClient("http://fhir.example.org/R4/", http_client=own, retry=False) as client,
    ):
        assert str(client.base_url) == "http://fhir.example.org/R4"


async def test_foreign_absolute_url_and_cross_origin_redirect_are_refused() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "fhir.example.org" and request.url.path.endswith("moved"):
            return httpx.Response(302, headers={"Location": "https://evil.example.com/steal"})
        if request.url.path.endswith("same"):
            return httpx.Response(307, headers={"Location": f"{BASE}/Patient/{PID}"})
        return httpx.Response(200, json={"resourceType": "Patient", "id": PID}, headers=JSON_CT)

    async with client_for(handler) as client:
        with pytest.raises(UnsafeURLError):
            await client.request("GET", "https://evil.example.com/Patient/1")
        with pytest.raises(UnsafeURLError, match="redirect"):
            await client.request("GET", "moved")
        response = await client.request("GET", "same")
        assert response.status_code == 200
        # Explicitly allowed foreign origin: no token is sent there.
        await client.request("GET", "https://files.example.net/x", allow_foreign_origin=True)
    assert all(r.url.host != "evil.example.com" for r in seen)
    assert seen[-2].headers["Authorization"] == f"Bearer {TOKEN}"  # same-origin redirect target
    assert "Authorization" not in seen[-1].headers


async def test_caller_owned_http_client_carries_everything_and_is_not_closed() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"resourceType": "Patient", "id": "1"}, headers=JSON_CT)

    own = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    auth = StaticTokenAuth(TOKEN)
    async with EpicFHIRClient(BASE, http_client=own, retry=False, auth=auth, epic_client_id="cid") as client:
        assert client.http is own
        assert auth.http_client is own  # the auth's own requests go through it too
        await client.read("Patient", "1")
    assert not own.is_closed
    assert seen[0].headers["Accept"] == "application/fhir+json"
    assert seen[0].headers["Epic-Client-ID"] == "cid"
    await own.aclose()


async def test_binary_and_attachment_ask_for_their_content_type() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"{\\rtf1 note}", headers={"Content-Type": "text/rtf"})

    async with client_for(handler) as client:
        data, content_type = await client.attachment({"contentType": "text/rtf", "url": "Binary/abc"})
        assert (data, content_type) == (b"{\\rtf1 note}", "text/rtf")
        assert seen[-1].headers["Accept"] == "text/rtf"
        assert str(seen[-1].url) == f"{BASE}/Binary/abc"
        await client.binary("xyz", content_type="text/html")
        assert seen[-1].headers["Accept"] == "text/html"
        assert seen[-1].url.path.endswith("/Binary/xyz")
        inline = base64.b64encode(b"hello").decode()
        assert await client.attachment({"contentType": "text/plain", "data": inline}) == (
            b"hello",
            "text/plain",
        )
        with pytest.raises(UnsafeURLError):
            await client.attachment({"contentType": "text/html", "url": "https://evil.example.com/Binary/1"})


async def test_operation_create_update_use_the_right_method_and_path() -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        match = mock.post("/Patient/$match").respond(200, json={"resourceType": "Bundle"}, headers=JSON_CT)
        summary = mock.get(f"/Patient/{PID}/$summary").respond(
            200, json={"resourceType": "Bundle"}, headers=JSON_CT
        )
        create = mock.post("/Observation").respond(
            201, json={"resourceType": "Observation", "id": "n"}, headers=JSON_CT
        )
        update = mock.put("/Observation/n").respond(200, content=b"")
        async with EpicFHIRClient(BASE, auth=StaticTokenAuth(TOKEN)) as client:
            params = {"resourceType": "Parameters", "parameter": []}
            await client.operation("$match", type="Patient", parameters=params)
            await client.operation("summary", type="Patient", id=PID)
            created = await client.create({"resourceType": "Observation", "status": "final"})
            assert created == {"resourceType": "Observation", "id": "n"}
            assert await client.update({"resourceType": "Observation", "id": "n"}) is None
        assert match.calls.last.request.headers["Content-Type"] == "application/fhir+json"
        assert summary.called
        assert create.called
        assert update.called


async def test_stream_checks_status_and_does_not_read_the_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("missing"):
            return httpx.Response(404, json=outcome("59008", "gone"), headers=JSON_CT)
        return httpx.Response(
            200, content=b"line1\nline2\n", headers={"Content-Type": "application/fhir+ndjson"}
        )

    async with client_for(handler) as client:
        async with client.stream("GET", "file") as response:
            lines = [line async for line in response.aiter_lines()]
        assert lines == ["line1", "line2"]
        with pytest.raises(NotFound):
            async with client.stream("GET", "missing"):
                pass


async def test_repr_and_debug_logs_hold_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"resourceType": "Bundle", "entry": []}, headers=JSON_CT)

    async with client_for(handler) as client:
        query = client.search("Observation", patient="SECRET-PATIENT", category="vital-signs")
        assert [r async for r in query] == []
        ours = [r.getMessage() for r in caplog.records if r.name.startswith("epic_fhir_async")]
        text = repr(client) + repr(query) + "".join(ours)
    # httpx's own INFO logger prints full URLs; that logger is the application's to configure (README).
    assert TOKEN not in text
    assert "SECRET-PATIENT" not in text
