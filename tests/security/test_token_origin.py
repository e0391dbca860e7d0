"""SECURITY.md promise 1: the bearer token goes only to the FHIR origin (and requests to the token endpoint).

A hostile or compromised server controls next links, redirects, ``Content-Location``, manifest file URLs and
attachment URLs. Each is pointed elsewhere here; the request is refused, or (where the caller opted in) sent
without the token. A transport records every request so "no request" and "no token" are checked, not assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth, UnsafeURLError
from epic_fhir_async.bulk._manifest import PollCadence

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"
TOKEN = "secret-bearer-token"
FAST = PollCadence(initial=0.001, maximum=0.002, max_retry_after=0.002, min_delay=0.0)
JSON = {"content-type": "application/fhir+json"}


class Server:
    """Answers with ``route(request)``; remembers (host, Authorization) of every request."""

    def __init__(self, route: Callable[[httpx.Request], httpx.Response]) -> None:
        self.route = route
        self.seen: list[tuple[str, str | None]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.host, request.headers.get("authorization")))
        return self.route(request)

    def client(self) -> EpicFHIRClient:
        return EpicFHIRClient(BASE, auth=StaticTokenAuth(TOKEN), transport=httpx.MockTransport(self.handler))

    @property
    def token_hosts(self) -> set[str]:
        return {host for host, authorization in self.seen if authorization}


def _bundle(next_url: str) -> httpx.Response:
    return httpx.Response(
        200,
        json={"resourceType": "Bundle", "entry": [], "link": [{"relation": "next", "url": next_url}]},
        headers=JSON,
    )


@pytest.mark.parametrize(
    "next_url",
    ["https://evil.example/R4/Patient?s=1", "//evil.example/R4/Patient", "http://fhir.example.org/x"],
)
async def test_a_next_link_elsewhere_is_refused_and_never_requested(next_url: str) -> None:
    server = Server(lambda request: _bundle(next_url))
    async with server.client() as client:
        with pytest.raises(UnsafeURLError):
            await _drain(client.search("Patient", identifier="x"))
    assert [host for host, _ in server.seen] == ["fhir.example.org"]


async def _drain(query: Any) -> None:
    async for _ in query:
        pass


def _redirect_to(location: str) -> Callable[[httpx.Request], httpx.Response]:
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "fhir.example.org" and request.url.path.endswith("/1"):
            return httpx.Response(302, headers={"location": location})
        return httpx.Response(200, content=b"%PDF", headers={"content-type": "application/pdf"})

    return route


async def test_a_redirect_elsewhere_is_refused() -> None:
    server = Server(_redirect_to("https://evil.example/steal"))
    async with server.client() as client:
        with pytest.raises(UnsafeURLError, match="redirect"):
            await client.binary("Binary/1", content_type="application/pdf")
    assert [host for host, _ in server.seen] == ["fhir.example.org"]


async def test_an_allowed_foreign_redirect_never_carries_the_token() -> None:
    # The redirected request must not copy the headers the auth flow had written (the token among them).
    server = Server(_redirect_to("https://cdn.example/file.pdf"))
    async with server.client() as client:
        response = await client.request("GET", "Binary/1", allow_foreign_origin=True)
    assert response.content == b"%PDF"
    assert server.seen == [("fhir.example.org", f"Bearer {TOKEN}"), ("cdn.example", None)]


async def test_a_same_origin_redirect_keeps_the_token() -> None:
    server = Server(_redirect_to(f"{BASE}/Binary/2"))
    async with server.client() as client:
        await client.binary("Binary/1", content_type="application/pdf")
    assert server.token_hosts == {"fhir.example.org"}
    assert len(server.seen) == 2


@pytest.mark.parametrize(
    "attachment",
    [
        {"url": "https://evil.example/Binary/1"},
        {"url": "//evil.example/Binary/1", "contentType": "text/html"},
    ],
)
async def test_attachment_urls_elsewhere_are_refused(attachment: dict[str, str]) -> None:
    server = Server(lambda request: httpx.Response(200))
    async with server.client() as client:
        with pytest.raises(UnsafeURLError):
            await client.attachment(attachment)
    assert server.seen == []


def _bulk(
    file_url: str, *, status_url: str = f"{BASE}/BulkRequest/1"
) -> Callable[[httpx.Request], httpx.Response]:
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/$export"):
            return httpx.Response(202, headers={"content-location": status_url})
        if request.url.path.endswith("/BulkRequest/1"):
            if request.method == "DELETE":
                return httpx.Response(202)
            manifest = {
                "requiresAccessToken": True,
                "output": [{"type": "Patient", "url": file_url}],
                "error": [],
            }
            return httpx.Response(200, json=manifest, headers=JSON)
        return httpx.Response(200, content=b'{"resourceType":"Patient","id":"a"}\n')

    return route


async def test_a_status_url_elsewhere_is_refused() -> None:
    server = Server(_bulk(f"{BASE}/f", status_url="https://evil.example/BulkRequest/1"))
    async with server.client() as client:
        with pytest.raises(UnsafeURLError):
            await client.bulk_export("g", types=["Patient"], cadence=FAST)
    assert server.token_hosts == {"fhir.example.org"}


async def test_a_manifest_file_elsewhere_is_refused_unless_allowed_and_then_gets_no_token() -> None:
    server = Server(_bulk("https://cdn.example/export/f1.ndjson"))
    async with server.client() as client:
        job = await client.bulk_export("g", types=["Patient"], cadence=FAST)
        await job.wait()
        with pytest.raises(UnsafeURLError, match="allow_foreign_files"):
            await _drain(job.resources())
        allowed = await client.bulk_export("g", types=["Patient"], cadence=FAST, allow_foreign_files=True)
        await allowed.wait()
        assert [r["id"] async for r in allowed.resources()] == ["a"]
    assert ("cdn.example", None) in server.seen
    assert server.token_hosts == {"fhir.example.org"}


async def test_the_token_goes_to_the_fhir_origin_and_nowhere_else_over_a_mixed_session() -> None:
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Patient"):
            return (
                _bundle(f"{BASE}/Patient?sessionID=2") if "sessionID" not in str(request.url) else _bundle("")
            )
        return _redirect_to("https://cdn.example/x")(request)

    server = Server(route)
    async with server.client() as client:
        await _drain(client.search("Patient", identifier="x"))
        await client.request("GET", "Binary/1", allow_foreign_origin=True)
        await client.request("GET", "https://cdn.example/direct", allow_foreign_origin=True)
    assert {host for host, _ in server.seen} == {"fhir.example.org", "cdn.example"}
    assert server.token_hosts == {"fhir.example.org"}


# -- the token endpoint: a discovered one must be on the FHIR origin (it receives the client's credentials) --

FOREIGN_TOKEN_URL = "https://auth.example.net/oauth2/token"


def _discovery(token_url: str, *, via: str) -> Callable[[httpx.Request], httpx.Response]:
    def route(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/.well-known/smart-configuration"):
            if via != "smart-configuration":
                return httpx.Response(404)
            return httpx.Response(200, json={"token_endpoint": token_url})
        if path.endswith("/metadata"):
            ext = {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": token_url}],
            }
            doc = {"resourceType": "CapabilityStatement", "rest": [{"security": {"extension": [ext]}}]}
            return httpx.Response(200, json=doc, headers=JSON)
        if path.endswith("/token"):
            return httpx.Response(
                200, json={"access_token": "t" * 20, "token_type": "Bearer", "expires_in": 60}
            )
        return httpx.Response(200, json={"resourceType": "Patient", "id": "p"}, headers=JSON)

    return route


def _secret_client(server: Server, **options: Any) -> EpicFHIRClient:
    from epic_fhir_async.auth import ClientSecretAuth

    auth = ClientSecretAuth("app", "client-secret-value", **options)
    return EpicFHIRClient(BASE, auth=auth, transport=httpx.MockTransport(server.handler))


@pytest.mark.parametrize("via", ["smart-configuration", "metadata"])
async def test_a_discovered_token_endpoint_elsewhere_is_refused_before_any_credential_goes(via: str) -> None:
    server = Server(_discovery(FOREIGN_TOKEN_URL, via=via))
    async with _secret_client(server) as client:
        with pytest.raises(UnsafeURLError, match="allowed_token_origins") as info:
            await client.read("Patient", "p")
    assert "auth.example.net" not in {host for host, _ in server.seen}  # no request went there at all
    assert "client-secret-value" not in str(info.value)


async def test_a_token_origin_can_be_allowed_explicitly() -> None:
    server = Server(_discovery(FOREIGN_TOKEN_URL, via="smart-configuration"))
    async with _secret_client(server, allowed_token_origins=["https://auth.example.net"]) as client:
        assert (await client.read("Patient", "p"))["id"] == "p"
    assert ("auth.example.net", server.seen[1][1]) in server.seen  # the token request, Basic credentials


async def test_a_token_url_given_explicitly_is_the_callers_choice() -> None:
    server = Server(_discovery(FOREIGN_TOKEN_URL, via="smart-configuration"))
    async with _secret_client(server, token_url=FOREIGN_TOKEN_URL) as client:
        assert (await client.read("Patient", "p"))["id"] == "p"
    assert [host for host, _ in server.seen] == ["auth.example.net", "fhir.example.org"]


async def test_a_same_origin_token_endpoint_is_discovered_as_before() -> None:
    server = Server(_discovery("https://fhir.example.org/oauth2/token", via="metadata"))
    async with _secret_client(server) as client:
        assert (await client.read("Patient", "p"))["id"] == "p"


@pytest.mark.parametrize("origin", ["http://auth.example.net", "auth.example.net", ""])
def test_allowed_token_origins_must_be_https_urls(origin: str) -> None:
    from epic_fhir_async import ConfigurationError
    from epic_fhir_async.auth import ClientSecretAuth

    with pytest.raises(ConfigurationError, match="allowed_token_origins"):
        ClientSecretAuth("app", "client-secret-value", allowed_token_origins=[origin])
