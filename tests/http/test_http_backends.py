"""The optional aiohttp transport keeps every rule of the default one: paging, size limits measured decoded,
redirects only on the origin, timeouts, retries, typed errors. The same tests run on both backends against a
real HTTP server on 127.0.0.1; aiohttp runs on asyncio only and says so under trio."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest

from epic_fhir_async import (
    ConfigurationError,
    EpicFHIRClient,
    RequestTimeout,
    ResponseTooLarge,
    RetryPolicy,
    StaticTokenAuth,
    Unauthorized,
    UnsafeURLError,
)

PATH = "/api/FHIR/R4"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: ClassVar[dict[str, int]] = {}

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": "application/fhir+json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        name = self.path.split("?")[0].removeprefix(PATH + "/")
        _Handler.hits[name] = _Handler.hits.get(name, 0) + 1
        port = self.server.server_address[1]  # type: ignore[index]
        if name == "Observation":
            page2 = "page=2" in self.path
            link = (
                []
                if page2
                else [{"relation": "next", "url": f"http://127.0.0.1:{port}{PATH}/Observation?page=2"}]
            )
            entries = [
                {"resource": {"resourceType": "Observation", "id": f"{'b' if page2 else 'a'}{i}"}}
                for i in range(5)
            ]
            self._send(200, orjson.dumps({"resourceType": "Bundle", "link": link, "entry": entries}))
        elif name == "Patient/declared-huge":
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(300 * 1024 * 1024))
            self.end_headers()
        elif name == "Patient/bomb":
            self._send(200, gzip.compress(b" " * (8 * 1024 * 1024)), {"Content-Encoding": "gzip"})
        elif name == "Patient/moved":
            self._send(302, b"", {"Location": f"http://localhost:{port}{PATH}/Patient/p1"})
        elif name == "Patient/slow":
            time.sleep(1.5)
            self._send(200, b"{}")
        elif name == "Patient/flaky":
            status = 503 if _Handler.hits[name] == 1 else 200
            self._send(status, orjson.dumps({"resourceType": "Patient", "id": "flaky"}))
        elif name == "Patient/expired":
            self._send(
                401,
                b'""',
                {
                    "Content-Type": "application/json; charset=utf-8",
                    "WWW-Authenticate": 'Bearer error="invalid_token"',
                },
            )
        else:
            self._send(404, b"{}")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the timeout test) breaks the pipe: expected, not news


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}{PATH}"
    server.shutdown()
    server.server_close()


# Each test on: the default transport under asyncio and trio, and the aiohttp one under asyncio (its only
# loop; its refusal under trio is tested below).
BACKENDS = pytest.mark.parametrize(
    ("anyio_backend", "backend"), [("asyncio", "httpx"), ("trio", "httpx"), ("asyncio", "aiohttp")]
)


def _client(base: str, backend: str, **options: Any) -> EpicFHIRClient:
    return EpicFHIRClient(base, auth=StaticTokenAuth("t0ken"), http_backend=backend, **options)  # type: ignore[arg-type]


pytestmark = pytest.mark.anyio


@BACKENDS
async def test_a_search_pages_through_next_links(base: str, backend: str) -> None:
    async with _client(base, backend) as client:
        ids = [r["id"] async for r in client.search("Observation", patient="p1", category="laboratory")]
    assert ids == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]


@BACKENDS
async def test_a_declared_length_over_the_limit_is_refused_before_reading(base: str, backend: str) -> None:
    async with _client(base, backend, max_resource_bytes=1024 * 1024) as client:
        with pytest.raises(ResponseTooLarge):
            await client.read("Patient", "declared-huge")


@BACKENDS
async def test_a_compressed_body_is_measured_decoded(base: str, backend: str) -> None:
    async with _client(base, backend, max_resource_bytes=1024 * 1024) as client:
        with pytest.raises(ResponseTooLarge):
            await client.read("Patient", "bomb")


@BACKENDS
async def test_a_redirect_to_another_origin_is_refused(base: str, backend: str) -> None:
    async with _client(base, backend) as client:
        with pytest.raises(UnsafeURLError):
            await client.read("Patient", "moved")


@BACKENDS
async def test_a_slow_answer_ends_in_request_timeout(base: str, backend: str) -> None:
    async with _client(base, backend, timeout=0.3, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(RequestTimeout):
            await client.read("Patient", "slow")


@BACKENDS
async def test_a_503_is_retried(base: str, backend: str) -> None:
    _Handler.hits.pop("Patient/flaky", None)
    async with _client(base, backend, retry=RetryPolicy(backoff_base=0.01)) as client:
        assert (await client.read("Patient", "flaky"))["id"] == "flaky"
    assert _Handler.hits["Patient/flaky"] == 2


@BACKENDS
async def test_epics_401_is_explained_from_the_challenge(base: str, backend: str) -> None:
    async with _client(base, backend) as client:
        with pytest.raises(Unauthorized, match="invalid_token") as caught:
            await client.read("Patient", "expired")
    assert "t0ken" not in str(caught.value)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_aiohttp_transport_refuses_trio_with_advice(base: str) -> None:
    with pytest.raises(ConfigurationError, match="asyncio only"):
        EpicFHIRClient(base, auth=StaticTokenAuth("t"), http_backend="aiohttp")


def test_the_aiohttp_transport_excludes_transport_options() -> None:
    with pytest.raises(ConfigurationError, match="drop transport=, http_client= and http2="):
        EpicFHIRClient("https://fhir.example.org/R4", http_backend="aiohttp", http2=True)
    with pytest.raises(ConfigurationError, match="'httpx' or 'aiohttp'"):
        EpicFHIRClient("https://fhir.example.org/R4", http_backend="curl")  # type: ignore[arg-type]
