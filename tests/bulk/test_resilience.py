"""Bulk $export when things go wrong: transient poll failures, token expiry during a long wait, odd servers,
kick-off retries on 5xx and 429, and a file read in hand-offs of several chunks that resumes after a dropped
connection with every line once."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from epic_fhir_async import (
    BackendServicesAuth,
    BulkExportError,
    EpicFHIRClient,
    EpicFHIRError,
    ServerError,
    StaticTokenAuth,
    UnsafeURLError,
)
from epic_fhir_async._retry import RetryPolicy
from epic_fhir_async.auth import generate_private_key, public_jwks
from epic_fhir_async.bulk._files import file_batches
from epic_fhir_async.bulk._manifest import BulkProgress
from epic_fhir_async.sandbox import EpicSandbox

from ..conftest import fast_sdk_retries
from .conftest import FAST, advance_each_poll, drain, make_client

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"


class FailingPolls(httpx.AsyncBaseTransport):
    """Answers the first ``failures`` status polls with a 503 (or a dropped connection) before the real server."""

    def __init__(self, inner: httpx.AsyncBaseTransport, failures: int, *, drop: bool = False) -> None:
        self.inner = inner
        self.failures = failures
        self.drop = drop
        self.failed = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        is_poll = "/BulkRequest/" in request.url.path and request.url.path.count("/BulkRequest/") == 1
        is_status = is_poll and len(request.url.path.split("/BulkRequest/")[1].split("/")) == 1
        if is_status and request.method == "GET" and self.failed < self.failures:
            self.failed += 1
            if self.drop:
                raise httpx.RemoteProtocolError("peer closed connection", request=request)
            return httpx.Response(503, request=request)
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("drop", [False, True], ids=["503", "dropped"])
async def test_transient_failures_while_polling_are_retried(
    sandbox: EpicSandbox, group_id: str, drop: bool
) -> None:
    failing = FailingPolls(sandbox.transport(), failures=3, drop=drop)
    async with make_client(sandbox, transport=failing) as client:  # transport retries off: ours do the work
        job = await client.bulk_export(group_id, types=["Patient"], cadence=FAST)
        manifest = await job.wait(progress=advance_each_poll(sandbox))
    assert failing.failed == 3
    assert manifest.outputs


async def test_polling_gives_up_after_too_many_failures(sandbox: EpicSandbox, group_id: str) -> None:
    failing = FailingPolls(sandbox.transport(), failures=100)
    async with make_client(sandbox, transport=failing) as client:
        job = await client.bulk_export(group_id, types=["Patient"], cadence=FAST)
        with pytest.raises(BulkExportError, match="4 times in a row") as info:
            await job.wait(max_transient_errors=3)
    assert info.value.status_code == 503
    assert failing.failed == 4


async def test_tokens_are_reminted_during_a_long_wait(group_id: str) -> None:
    from epic_fhir_async.sandbox import SandboxClock

    clock = SandboxClock(frozen_at=1_750_000_000.0)
    sb = EpicSandbox(seed=0, patients=12, clock=clock, token_lifetime=300.0)
    sb.bulk.export_seconds = 4 * 3600.0  # a four-hour export with five-minute tokens
    key = generate_private_key()
    sb.register_client("bulk-backend", public_jwks(key))
    auth = BackendServicesAuth(
        "bulk-backend", key, token_url=sb.token_url, clock=clock.now, wall_clock=clock.now
    )
    async with EpicFHIRClient(sb.base_url, auth=auth, transport=sb.transport()) as client:
        job = await client.bulk_export(group_id, types=["Patient", "Condition"], cadence=FAST)
        manifest = await job.wait(progress=advance_each_poll(sb, 400.0))
        sb.clock.advance(400.0)  # the token of the last poll is stale by the time files are read
        total = 0
        async with job.resources() as stream:
            async for _ in stream:
                total += 1
    assert total == sum(manifest.expected_counts().values())
    assert sb.stats["token_requests"] >= 4 * 3600 / 400 - 1


# --------------------------------------------------------------------------------- scripted servers


def scripted(handler: Callable[[httpx.Request], httpx.Response]) -> EpicFHIRClient:
    return EpicFHIRClient(
        BASE,
        auth=StaticTokenAuth("t0ken"),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=1),
    )


def kickoff_or(
    manifest: dict[str, Any] | Callable[[httpx.Request], dict[str, Any]],
    files: dict[str, httpx.Response],
    seen: list[httpx.Request],
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path.endswith("/$export"):
            return httpx.Response(202, headers={"Content-Location": f"{BASE}/status/1"})
        if path.startswith("/api/FHIR/R4/status/"):
            body = manifest(request) if callable(manifest) else manifest
            return httpx.Response(200, json=body)
        return files[str(request.url)]

    return handler


def ndjson(*resources: dict[str, Any]) -> bytes:
    import json

    return b"".join(json.dumps(r).encode() + b"\n" for r in resources)


async def test_token_only_to_the_fhir_origin_and_only_when_required() -> None:
    seen: list[httpx.Request] = []
    same = f"{BASE}/files/a"
    foreign = "https://cdn.example.net/files/b"
    manifest = {
        "transactionTime": "2026-01-01T00:00:00Z",
        "request": f"{BASE}/Group/g/$export",
        "requiresAccessToken": True,
        "output": [
            {"type": "Patient", "url": same, "count": 1},
            {"type": "Patient", "url": foreign, "count": 1},
        ],
    }
    files = {
        same: httpx.Response(200, content=ndjson({"resourceType": "Patient", "id": "1"})),
        foreign: httpx.Response(200, content=ndjson({"resourceType": "Patient", "id": "2"})),
    }
    async with scripted(kickoff_or(manifest, files, seen)) as client:
        job = await client.bulk_export("g", cadence=FAST)
        await job.wait()
        with pytest.raises(UnsafeURLError):
            await drain(job.resources())
        job.allow_foreign_files = True
        ids = [r["id"] async for r in job.resources()]
    assert sorted(ids) == ["1", "2"]
    by_url = {str(r.url): r for r in seen}
    assert by_url[same].headers.get("authorization") == "Bearer t0ken"
    assert "authorization" not in by_url[foreign].headers
    assert "cdn.example.net" not in str(seen[:3])  # refused before any request in the default mode


async def test_no_token_when_the_manifest_says_so_and_gzip_files() -> None:
    seen: list[httpx.Request] = []
    url = f"{BASE}/files/a"
    body = ndjson(*({"resourceType": "Observation", "id": str(i)} for i in range(50)))
    manifest = {"requiresAccessToken": False, "output": [{"type": "Observation", "url": url, "count": 50}]}
    files = {url: httpx.Response(200, content=gzip.compress(body), headers={"Content-Encoding": "gzip"})}
    async with scripted(kickoff_or(manifest, files, seen)) as client:
        job = await client.bulk_export("g", cadence=FAST)
        await job.wait()
        ids = [r["id"] async for r in job.resources()]
    assert ids == [str(i) for i in range(50)]
    assert "authorization" not in seen[-1].headers


async def test_a_count_mismatch_is_an_error() -> None:
    url = f"{BASE}/files/a"
    manifest = {"output": [{"type": "Patient", "url": url, "count": 3}]}
    files = {url: httpx.Response(200, content=ndjson({"resourceType": "Patient", "id": "1"}))}
    async with scripted(kickoff_or(manifest, files, [])) as client:
        job = await client.bulk_export("g", cadence=FAST)
        await job.wait()
        with pytest.raises(BulkExportError, match="manifest says 3"):
            await drain(job.resources())


async def test_paged_manifest_is_merged() -> None:
    def manifest(request: httpx.Request) -> dict[str, Any]:
        if request.url.params.get("page") == "2":
            return {"output": [{"type": "Condition", "url": f"{BASE}/files/c", "count": 1}]}
        return {
            "transactionTime": "2026-01-01T00:00:00Z",
            "requiresAccessToken": True,
            "output": [{"type": "Patient", "url": f"{BASE}/files/p", "count": 1}],
            "error": [{"type": "OperationOutcome", "url": f"{BASE}/files/e"}],
            "link": [{"relation": "next", "url": f"{BASE}/status/1?page=2"}],
        }

    async with scripted(kickoff_or(manifest, {}, [])) as client:
        job = await client.bulk_export("g", cadence=FAST)
        result = await job.wait()
    assert [f.type for f in result.outputs] == ["Patient", "Condition"]
    assert result.transaction_time == "2026-01-01T00:00:00Z"
    assert len(result.errors) == 1


async def test_retry_after_epoch_and_progress_are_handled() -> None:
    polls: list[BulkProgress] = []
    answers = iter(
        [
            httpx.Response(202, headers={"Retry-After": "1750000000", "X-Progress": "Busy: 12.5%"}),
            httpx.Response(202, headers={"Retry-After": "Wed, 01 Jan 2020 00:00:00 GMT"}),
            httpx.Response(202),
            httpx.Response(200, json={"output": []}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/$export"):
            assert request.headers["prefer"] == "respond-async"
            assert request.headers["accept"] == "application/fhir+json"
            return httpx.Response(202, headers={"Content-Location": "/api/FHIR/R4/status/9"})  # relative
        return next(answers)

    async with scripted(handler) as client:
        job = await client.bulk_export("g", cadence=FAST)
        assert job.status_url == f"{BASE}/status/9"
        await job.wait(progress=polls.append)
    assert [p.percent for p in polls] == [12.5, None, None, 100.0]
    # The epoch "delay" was not slept on: it fell back to the (millisecond) cadence.
    assert polls[0].next_poll is not None
    assert polls[0].next_poll <= FAST.maximum


async def test_type_filter_commas_travel_as_percent_2c() -> None:
    seen: list[httpx.Request] = []
    async with scripted(kickoff_or({"output": []}, {}, seen)) as client:
        await client.bulk_export(
            "e3iab.QwjV",
            types=["Patient", "Observation"],
            type_filters=["Observation?category=laboratory,vital-signs"],
        )
    raw = seen[0].url.raw_path.decode()
    assert raw.startswith("/api/FHIR/R4/Group/e3iab.QwjV/$export?")
    assert "_type=Patient,Observation" in raw
    assert "_typeFilter=Observation%3Fcategory%3Dlaboratory%2Cvital-signs" in raw


async def test_unexpected_kickoff_answers() -> None:
    def no_location(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202)

    async with scripted(no_location) as client:
        with pytest.raises(BulkExportError, match="Content-Location"):
            await client.bulk_export("g")


async def test_resume_accepts_relative_and_refuses_foreign_status_urls() -> None:
    async with scripted(kickoff_or({"output": []}, {}, [])) as client:
        job = client.bulk_export_job("status/7")
        assert job.status_url == f"{BASE}/status/7"
        assert (await job.wait()).outputs == ()
        with pytest.raises(UnsafeURLError):
            client.bulk_export_job("https://elsewhere.example.com/status/7")


async def test_download_count_mismatch_leaves_no_file(tmp_path: Any) -> None:
    url = f"{BASE}/files/a"
    manifest = {"output": [{"type": "Patient", "url": url, "count": 2}]}
    files = {url: httpx.Response(200, content=ndjson({"resourceType": "Patient", "id": "1"}))}
    async with scripted(kickoff_or(manifest, files, [])) as client:
        job = await client.bulk_export("g", cadence=FAST)
        await job.wait()
        with pytest.raises(BulkExportError, match="manifest says 2"):
            await job.download(tmp_path)
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".ndjson" or p.name.endswith(".part")) == []
    )


async def test_a_line_that_is_not_json_is_an_error_without_its_content() -> None:
    url = f"{BASE}/files/a"
    manifest = {"output": [{"type": "Patient", "url": url}]}
    body = ndjson({"resourceType": "Patient", "id": "1"}) + b'{"name": "Jane Secret\n'
    files = {url: httpx.Response(200, content=body)}
    async with scripted(kickoff_or(manifest, files, [])) as client:
        job = await client.bulk_export("g", cadence=FAST)
        await job.wait()
        with pytest.raises(BulkExportError, match="not valid JSON") as info:
            await drain(job.resources())
        assert "Secret" not in str(info.value)
        seen: list[str] = []

        async def bare_loop() -> None:
            async for resource in job.resources():
                seen.append(resource["id"])

        with pytest.raises(BulkExportError, match="not valid JSON"):
            await bare_loop()
        assert seen == ["1"]


# --------------------------------------------------------------------------------- kick-off retries


@pytest.fixture
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_sdk_retries(monkeypatch, 0.01)


async def test_bulk_kickoff_retries_server_errors_and_rate_limits_but_not_too_recent(
    short_waits: None,
) -> None:
    answers = [
        httpx.Response(503),
        httpx.Response(429, headers={"retry-after": "0"}),
        httpx.Response(202, headers={"content-location": f"{BASE}/BulkRequest/1"}),
    ]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return answers.pop(0)

    async with EpicFHIRClient(
        BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(handler)
    ) as client:
        job = await client.bulk_export("g", types=["Patient"])
        assert job.status_url == f"{BASE}/BulkRequest/1"
        assert seen == ["GET", "GET", "GET"]
        answers.extend([httpx.Response(500)] * 4)
        with pytest.raises(EpicFHIRError, match="refused") as info:
            await client.bulk_export("g", types=["Patient"])
        assert isinstance(info.value.__cause__, ServerError)
        assert len(seen) == 3 + 4  # gave up after four attempts


# --------------------------------------------------------------------------------- file reads


class _Body(httpx.AsyncByteStream):
    """An NDJSON body in fixed-size chunks; ``cut_after`` chunks, then the connection drops."""

    def __init__(self, data: bytes, size: int, cut_after: int | None) -> None:
        self.chunks = [data[i : i + size] for i in range(0, len(data), size)]
        self.cut_after = cut_after

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for n, chunk in enumerate(self.chunks):
            if n == self.cut_after:
                raise httpx.ReadError("connection reset mid-body")
            yield chunk


@pytest.mark.parametrize("cut_after", [None, 2, 5, 9])
async def test_grouped_hand_offs_resume_with_every_line_once(cut_after: int | None) -> None:
    lines = [json.dumps({"resourceType": "Patient", "id": f"p{i:03d}"}).encode() for i in range(40)]
    data = b"\n".join(lines) + b"\n"  # ~38 bytes a line
    file_url = f"{BASE}/files/1"
    requests: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status/1"):
            manifest = {"output": [{"type": "Patient", "url": file_url, "count": len(lines)}]}
            return httpx.Response(200, json=manifest)
        requests.append(1)
        cut = cut_after if len(requests) == 1 else None
        return httpx.Response(200, stream=_Body(data, 100, cut))

    async with scripted(handler) as client:
        job = client.bulk_export_job(f"{BASE}/status/1")
        manifest = await job.wait()
        batches = [
            b
            async for b in file_batches(
                job._files(), manifest.outputs[0], verify=True, parse=False, min_bytes=300
            )
        ]
    assert [line for batch in batches for line in batch] == lines
    assert len(requests) == (1 if cut_after is None else 2)
    # Every list but the file's last spans >= 300 bytes of 100-byte chunks (>= 7 lines), resumed or not.
    assert all(len(batch) >= 7 for batch in batches[:-1])
    assert len(batches) == 6
