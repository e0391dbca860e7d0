"""SECURITY.md promise 6: a hostile server cannot exhaust memory with a huge answer.

JSON responses (pages, reads, manifests, error bodies), token responses, discovery documents and single
NDJSON lines are read up to a limit (:class:`ResponseTooLarge`); a ``Content-Length`` above it fails before
the body is read, a compressed bomb fails on its decoded size. Bulk files themselves stream with flat memory.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Callable

import anyio.lowlevel
import httpx
import pytest

from epic_fhir_async import (
    BackendServicesAuth,
    EpicAuth,
    EpicFHIRClient,
    ResponseTooLarge,
    ServerError,
    StaticTokenAuth,
)
from epic_fhir_async._config import (
    MAX_ERROR_BODY_BYTES,
    MAX_NDJSON_LINE_BYTES,
    MAX_RESOURCE_BYTES,
    MAX_RESPONSE_BYTES,
    MAX_TOKEN_RESPONSE_BYTES,
)
from epic_fhir_async._retry import RetryPolicy
from epic_fhir_async.auth import generate_private_key
from epic_fhir_async.bulk._manifest import PollCadence

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"
LIMIT = 10_000
JSON = {"content-type": "application/fhir+json"}


class Endless(httpx.AsyncByteStream):
    """A body that never ends (no Content-Length): only a limit stops the reader. Each chunk waits on the
    event loop first, as a socket read does (so the SDK's stop can cancel the read, as it does a socket's)."""

    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"resourceType": "Bundle", "entry": ['
        while True:
            await anyio.lowlevel.checkpoint()
            self.sent += 1000
            yield b" " * 1000


class Chunks(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 1000):
            yield self.data[start : start + 1000]


def _client(
    handler: Callable[[httpx.Request], httpx.Response], auth: EpicAuth | None = None, **kwargs: object
) -> EpicFHIRClient:
    return EpicFHIRClient(
        BASE,
        auth=auth or StaticTokenAuth("t"),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=1),
        **kwargs,  # type: ignore[arg-type]
    )


def test_defaults_are_generous_for_epic_and_bounded() -> None:
    # A 1000-entry Epic page is ~2.3 MB (docs/epic-notes.md §3.5); parsing JSON built for it costs ~25x its
    # size, so a page stays under 64 MiB and a body holding one resource under 16 MiB; one bulk line is one
    # resource; an error explains itself in KB; a token is ~2 KB.
    assert 16 * 2**20 <= MAX_RESPONSE_BYTES <= 64 * 2**20
    assert 4 * 2**20 <= MAX_RESOURCE_BYTES <= 16 * 2**20 < MAX_RESPONSE_BYTES
    assert 16 * 2**20 <= MAX_NDJSON_LINE_BYTES <= MAX_RESPONSE_BYTES
    assert MAX_ERROR_BODY_BYTES <= 1 * 2**20
    assert MAX_TOKEN_RESPONSE_BYTES <= 4 * 2**20


async def test_an_endless_json_body_stops_at_the_limit() -> None:
    body = Endless()
    async with _client(
        lambda r: httpx.Response(200, headers=JSON, stream=body), max_resource_bytes=LIMIT
    ) as c:
        with pytest.raises(ResponseTooLarge, match=f"larger than {LIMIT} bytes") as info:
            await c.read("Patient", "p")
    assert info.value.limit == LIMIT
    assert body.sent <= LIMIT + 2000


async def test_a_declared_length_above_the_limit_fails_before_reading() -> None:
    body = Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={**JSON, "content-length": str(10 * LIMIT)}, stream=body)

    async with _client(handler, max_response_bytes=LIMIT) as client:
        with pytest.raises(ResponseTooLarge):
            await client.search("Patient", identifier="x").first()
    assert body.sent == 0


async def test_a_compressed_bomb_is_measured_decoded() -> None:
    bomb = gzip.compress(b'{"resourceType": "Patient", "x": "' + b"0" * (20 * LIMIT) + b'"}')
    assert len(bomb) < LIMIT

    def handler(request: httpx.Request) -> httpx.Response:
        # A stream, as from a socket (a bytes body would be decoded by httpx.Response itself, up front).
        return httpx.Response(200, headers={**JSON, "content-encoding": "gzip"}, stream=Chunks(bomb))

    async with _client(handler, max_resource_bytes=LIMIT) as client:
        with pytest.raises(ResponseTooLarge):
            await client.read("Patient", "p")
    async with _client(handler, max_resource_bytes=None) as unlimited:  # the caller's explicit choice
        assert (await unlimited.read("Patient", "p"))["resourceType"] == "Patient"


async def test_error_bodies_are_cut_at_their_own_limit_and_keep_their_status() -> None:
    # An error needs a few KB to explain itself: the rest is dropped (never parsed), the status still decides
    # the type, and the message says the body was cut.
    body = Endless()
    async with _client(lambda r: httpx.Response(500, headers=JSON, stream=body)) as c:
        with pytest.raises(ServerError, match=f"error body over {MAX_ERROR_BODY_BYTES} bytes") as info:
            await c.read("Patient", "p")
    assert info.value.operation_outcome is None
    assert body.sent <= MAX_ERROR_BODY_BYTES + 2000


async def test_a_huge_token_response_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/json"}, stream=Endless())

    auth = BackendServicesAuth(
        "app", generate_private_key("ES256"), token_url="https://fhir.example.org/token"
    )
    async with _client(handler, auth=auth):
        with pytest.raises(ResponseTooLarge, match=f"larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"):
            await auth.get_token()


# This in-memory endless body never awaits, so when the SDK stops early it cannot run httpx's generators out
# (it gives up after a few chunks) and trio reports them to the GC as a ResourceWarning. Over a socket the
# SDK leaves nothing behind: tests/security/test_bulk_files_on_sockets.py runs the same stop, warnings on.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_endless_ndjson_line_in_a_bulk_file_is_refused() -> None:
    async def endless_line() -> AsyncIterator[bytes]:
        yield b'{"resourceType": "Patient", "id": "a"}\n{"resourceType": "Patient", "note": "'
        while True:
            yield b"x" * 4096

    class Line(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in endless_line():
                yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/$export"):
            return httpx.Response(202, headers={"content-location": f"{BASE}/BulkRequest/1"})
        if path.endswith("/BulkRequest/1"):
            manifest = {"requiresAccessToken": True, "output": [{"type": "Patient", "url": f"{BASE}/f"}]}
            return httpx.Response(200, json=manifest, headers=JSON)
        return httpx.Response(200, headers={"content-type": "application/fhir+ndjson"}, stream=Line())

    cadence = PollCadence(initial=0.001, maximum=0.002, min_delay=0.0)
    async with _client(handler, max_ndjson_line_bytes=LIMIT) as client:
        job = await client.bulk_export("g", types=["Patient"], cadence=cadence)
        await job.wait()
        got: list[object] = []
        with pytest.raises(ResponseTooLarge, match=f"longer than {LIMIT} bytes"):
            await _collect(job, got)
    assert got in ([], [{"resourceType": "Patient", "id": "a"}])  # at most what came before the endless line


async def _collect(job: object, into: list[object]) -> None:
    async for resource in job.resources():  # type: ignore[attr-defined]
        into.append(resource)
