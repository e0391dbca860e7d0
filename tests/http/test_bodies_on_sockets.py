"""Bodies stopped at their limit over real sockets (a raw server on 127.0.0.1), on asyncio and trio.

When the SDK stops reading a body early, httpx's and httpcore's nested body generators must end, not wait
for the GC: trio reports a suspended one as a ``ResourceWarning`` (the issue saw them for JSON bodies that
stopped at their limit). Warnings are errors in this test run, and each test collects garbage before it
ends, so a generator left behind fails it. The connection is released too (the server sees it closed), and
the client goes on working on the same pool.
"""

from __future__ import annotations

import gc

import anyio
import pytest

from epic_fhir_async import EpicFHIRClient, ResponseTooLarge, RetryPolicy, ServerError, StaticTokenAuth
from tests.http.rawserver import Connection, RawRequest, gzip_bomb, head, raw_server

pytestmark = pytest.mark.anyio

PATH = "/api/FHIR/R4"
LIMIT = 100_000
PATIENT = b'{"resourceType": "Patient", "id": "ok"}'


async def endless_chunked(conn: Connection, request: RawRequest) -> None:
    await conn.send(head(200, {"Content-Type": "application/fhir+json", "Transfer-Encoding": "chunked"}))
    await conn.send(b"1\r\n[\r\n")
    while True:
        await conn.send(b"1000\r\n" + b" " * 4096 + b"\r\n")
        await anyio.sleep(0)


async def gzip_bomb_json(conn: Connection, request: RawRequest) -> None:
    bomb = gzip_bomb(32 * 1024 * 1024)
    headers = {
        "Content-Type": "application/fhir+json",
        "Content-Encoding": "gzip",
        "Content-Length": str(len(bomb)),
    }
    await conn.send(head(200, headers) + bomb)
    await anyio.sleep(30)  # the client must be the one to end the read


async def endless_error(conn: Connection, request: RawRequest) -> None:
    await conn.send(head(500, {"Content-Type": "text/html", "Transfer-Encoding": "chunked"}))
    while True:
        await conn.send(b"1000\r\n" + b"<p>" * 1365 + b"x\r\n")
        await anyio.sleep(0)


async def _then_a_normal_read(client: EpicFHIRClient, server_url: str) -> None:
    async def fine(conn: Connection, request: RawRequest) -> None:
        await conn.send(
            head(200, {"Content-Type": "application/fhir+json", "Content-Length": str(len(PATIENT))})
        )
        await conn.send(PATIENT)

    async with raw_server(fine) as other:
        response = await client.request("GET", f"{other.url}{PATH}/Patient/ok", allow_foreign_origin=True)
        assert response.content == PATIENT


@pytest.mark.parametrize(
    ("respond", "error"),
    [(endless_chunked, ResponseTooLarge), (gzip_bomb_json, ResponseTooLarge), (endless_error, ServerError)],
    ids=["endless-json", "gzip-bomb", "endless-error-body"],
)
async def test_a_body_stopped_at_its_limit_leaves_no_generator_and_no_socket(
    respond: object, error: type[Exception]
) -> None:
    async with raw_server(respond) as server:  # type: ignore[arg-type]
        client = EpicFHIRClient(
            server.url + PATH,
            auth=StaticTokenAuth("t" * 20),
            retry=RetryPolicy(max_attempts=1),
            max_resource_bytes=LIMIT,
        )
        async with client:
            for _ in range(3):  # the same pool, again and again
                with pytest.raises(error):
                    await client.read("Patient", "p")
                gc.collect()
            await server.until_closed()
            await _then_a_normal_read(client, server.url)
        gc.collect()
