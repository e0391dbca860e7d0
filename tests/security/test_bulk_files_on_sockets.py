"""Bulk files from a hostile server, over real sockets (a raw server on 127.0.0.1), on asyncio and trio.

A compressed file may inflate at most ``MAX_INFLATION`` times, so a 100 KB gzip file cannot write 100 MiB to
disk; a file stops as soon as it passes its manifest ``count``; an endless NDJSON line stops at its limit;
and each of these stops leaves no httpx or httpcore body generator suspended (trio would report a
``ResourceWarning``, which the test run turns into an error), no socket open and no task running.
"""

from __future__ import annotations

import pathlib
from typing import Any

import anyio
import pytest

from epic_fhir_async import (
    BulkExportError,
    EpicFHIRClient,
    ResponseTooLarge,
    RetryPolicy,
    StaticTokenAuth,
    _json,
)
from epic_fhir_async.bulk import BulkTransferStats, PollCadence
from epic_fhir_async.bulk._files import MAX_INFLATION
from tests.http.rawserver import Connection, RawRequest, RawServer, gzip_bomb, head, raw_server, running_tasks

pytestmark = pytest.mark.anyio

PATH = "/api/FHIR/R4"
FAST = PollCadence(initial=0.001, maximum=0.002, min_delay=0.0)
PATIENT = b'{"resourceType": "Patient", "id": "a"}\n'
#: 100 MiB of blank lines in ~100 KB: no line is long and none is counted, so only the inflation guard stops it.
BLANK_BOMB = gzip_bomb(100 * 1024 * 1024, b"\n")
#: 100 MiB of one Patient line over and over: far more resources than the manifest's count of 1.
LINES_BOMB = gzip_bomb(100 * 1024 * 1024, PATIENT)


def _export(file_head: bytes, file_body: bytes, *, count: int | None) -> Any:
    async def respond(conn: Connection, request: RawRequest) -> None:
        base = f"http://{request.headers['host']}{PATH}"
        if request.target.endswith("/$export") or "/$export?" in request.target:
            await conn.send(head(202, {"Content-Location": f"{base}/BulkRequest/1", "Content-Length": "0"}))
        elif request.target.endswith("/BulkRequest/1"):
            entry: dict[str, Any] = {"type": "Patient", "url": f"{base}/files/1"}
            if count is not None:
                entry["count"] = count
            body = _json.dumps({"requiresAccessToken": True, "output": [entry], "error": []})
            await conn.send(head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}))
            await conn.send(body)
        else:
            await conn.send(file_head)
            for start in range(0, len(file_body), 16 * 1024):
                await conn.send(file_body[start : start + 16 * 1024])
            await anyio.sleep(30)  # keep the connection: the client must be the one to end the read

    return respond


def _gzip_head(size: int) -> bytes:
    return head(
        200,
        {"Content-Type": "application/fhir+ndjson", "Content-Encoding": "gzip", "Content-Length": str(size)},
    )


def _client(server: RawServer) -> EpicFHIRClient:
    return EpicFHIRClient(
        server.url + PATH, auth=StaticTokenAuth("tok-" + "z" * 30), retry=RetryPolicy(max_attempts=1)
    )


async def _resources(client: EpicFHIRClient) -> None:
    job = await client.bulk_export("g", types=["Patient"], cadence=FAST)
    await job.wait()
    async for _ in job.resources():
        pass


async def _download(client: EpicFHIRClient, directory: pathlib.Path, stats: BulkTransferStats) -> None:
    job = await client.bulk_export("g", types=["Patient"], cadence=FAST)
    await job.wait()
    await job.download(directory, stats=stats)


async def test_a_compression_bomb_does_not_fill_the_disk(tmp_path: pathlib.Path) -> None:
    respond = _export(_gzip_head(len(BLANK_BOMB)), BLANK_BOMB, count=None)
    async with raw_server(respond) as server:
        tasks = running_tasks()
        stats = BulkTransferStats()
        async with _client(server) as client:
            with pytest.raises(BulkExportError, match=f"inflates more than {MAX_INFLATION} times"):
                await _download(client, tmp_path, stats)
            with pytest.raises(BulkExportError, match=f"inflates more than {MAX_INFLATION} times"):
                await _resources(client)
        await server.until_closed()
        assert running_tasks() == tasks
    # At most 200x what came over the wire (~100 KB), plus one read's worth: not the bomb's 100 MiB.
    assert stats.bytes < 32 * 1024 * 1024
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part") or p.name.endswith(".ndjson")]


async def test_a_file_stops_as_soon_as_it_passes_its_count(tmp_path: pathlib.Path) -> None:
    respond = _export(_gzip_head(len(LINES_BOMB)), LINES_BOMB, count=1)
    async with raw_server(respond) as server:
        stats = BulkTransferStats()
        async with _client(server) as client:
            with pytest.raises(BulkExportError, match="holds more than the 1 resources"):
                await _download(client, tmp_path, stats)
            with pytest.raises(BulkExportError, match="holds more than the 1 resources"):
                await _resources(client)
        await server.until_closed()
    assert stats.bytes < 4 * 1024 * 1024


async def test_an_endless_line_stops_at_its_limit_without_leaving_generators(tmp_path: pathlib.Path) -> None:
    # The read stops mid-body on the client's side; over HTTP/1.1 the SDK closes the connection under httpx and
    # httpcore and runs their body generators out, so trio has nothing to warn about.
    endless = PATIENT + b'{"resourceType": "Patient", "note": "' + b"x" * (4 * 1024 * 1024)
    plain = head(200, {"Content-Type": "application/fhir+ndjson", "Content-Length": str(len(endless) + 10)})
    respond = _export(plain, endless, count=None)
    async with raw_server(respond) as server:
        client = EpicFHIRClient(
            server.url + PATH,
            auth=StaticTokenAuth("tok-" + "z" * 30),
            retry=RetryPolicy(max_attempts=1),
            max_ndjson_line_bytes=64 * 1024,
        )
        async with client:
            with pytest.raises(ResponseTooLarge, match="longer than 65536 bytes"):
                await _resources(client)
            with pytest.raises(ResponseTooLarge, match="longer than 65536 bytes"):
                await _download(client, tmp_path, BulkTransferStats())
        await server.until_closed()


async def test_a_consumer_that_stops_early_leaves_nothing_behind() -> None:
    body = PATIENT * 200_000  # ~8 MB: the consumer takes one resource and leaves
    respond = _export(
        head(200, {"Content-Type": "application/fhir+ndjson", "Content-Length": str(len(body))}),
        body,
        count=None,
    )
    async with raw_server(respond) as server:
        tasks = running_tasks()
        async with _client(server) as client:
            job = await client.bulk_export("g", types=["Patient"], cadence=FAST)
            await job.wait()
            async with job.resources() as stream:
                async for resource in stream:
                    assert resource["id"] == "a"
                    break
        await server.until_closed()
        assert running_tasks() == tasks
