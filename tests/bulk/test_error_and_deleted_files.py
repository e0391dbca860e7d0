"""The manifest's ``error`` and ``deleted`` files, as a real Bulk Data server sends them.

An ``error[]`` entry whose ``count`` does not match its file's lines (seen on a real server) no longer aborts
``download()``: error-file counts are advisory (a warning), output counts stay strict. ``deleted[]`` files
(one Bundle per line listing resources deleted since ``_since``) can be streamed (``job.deleted()``) and are
downloaded with the rest (``deleted.NNN.ndjson``).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import httpx
import pytest

from epic_fhir_async import BulkExportError, EpicFHIRClient, RetryPolicy, StaticTokenAuth, _json
from epic_fhir_async.bulk import PollCadence

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"
FAST = PollCadence(initial=0.001, maximum=0.002, min_delay=0.0)
PATIENTS = b'{"resourceType": "Patient", "id": "a"}\n{"resourceType": "Patient", "id": "b"}\n'
OUTCOMES = (
    b'{"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}\n'
    b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}\n'
)
DELETION = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [{"request": {"method": "DELETE", "url": "Patient/gone"}}],
}


def _client(manifest: dict[str, Any]) -> EpicFHIRClient:
    files = {
        f"{BASE}/files/patients": PATIENTS,
        f"{BASE}/files/errors": OUTCOMES,
        f"{BASE}/files/deleted": _json.dumps(DELETION) + b"\n",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url.endswith("/$export") or "/$export?" in url:
            return httpx.Response(202, headers={"content-location": f"{BASE}/BulkRequest/1"})
        if url.endswith("/BulkRequest/1"):
            return httpx.Response(200, json=manifest)
        return httpx.Response(200, content=files[url], headers={"content-type": "application/fhir+ndjson"})

    return EpicFHIRClient(
        BASE,
        auth=StaticTokenAuth("t" * 20),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=1),
    )


def _manifest(*, error_count: int, output_count: int = 2) -> dict[str, Any]:
    return {
        "transactionTime": "2026-01-01T00:00:00Z",
        "requiresAccessToken": True,
        "output": [{"type": "Patient", "url": f"{BASE}/files/patients", "count": output_count}],
        "error": [{"type": "OperationOutcome", "url": f"{BASE}/files/errors", "count": error_count}],
        "deleted": [{"type": "Bundle", "url": f"{BASE}/files/deleted", "count": 1}],
    }


async def test_an_error_file_count_that_does_not_match_is_a_warning_not_a_failure(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="epic_fhir_async.bulk")
    async with _client(_manifest(error_count=5)) as client:
        job = await client.bulk_export("g", types=["Patient"], cadence=FAST)
        await job.wait()
        result = await job.download(tmp_path)
    assert result.resources == 2
    assert [f.lines for f in result.error_files] == [2]
    assert len(result.outcomes) == 2
    assert any("error-file counts are advisory" in r.getMessage() for r in caplog.records)


async def test_an_output_file_count_that_does_not_match_still_fails(tmp_path: pathlib.Path) -> None:
    async with _client(_manifest(error_count=2, output_count=3)) as client:
        job = await client.bulk_export("g", types=["Patient"], cadence=FAST)
        await job.wait()
        with pytest.raises(BulkExportError, match="the manifest says 3"):
            await job.download(tmp_path)


async def test_deleted_files_can_be_streamed() -> None:
    async with _client(_manifest(error_count=2)) as client:
        job = await client.bulk_export("g", types=["Patient"], cadence=FAST)
        await job.wait()
        assert [b async for b in job.deleted()] == [DELETION]
        async with job.deleted() as stream:
            assert [b async for b in stream] == [DELETION]
        assert [r["id"] async for r in job.resources()] == ["a", "b"]  # outputs only, as before


async def test_deleted_files_are_downloaded_with_the_rest(tmp_path: pathlib.Path) -> None:
    async with _client(_manifest(error_count=2)) as client:
        job = await client.bulk_export("g", types=["Patient"], cadence=FAST)
        await job.wait()
        result = await job.download(tmp_path)
        assert [f.path.name for f in result.deleted_files] == ["deleted.001.ndjson"]
        assert _json.loads(result.deleted_files[0].path.read_bytes()) == DELETION
        assert result.resources == 2  # deletions are not resources of the export
        skipped = await job.download(tmp_path / "no-deleted", include_deleted=False)
        assert skipped.deleted_files == ()
