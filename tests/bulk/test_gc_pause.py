"""Lists from ``stream.batches()`` are parsed with Python's cyclic GC paused, and the collector is left exactly
as it was: after every list, after a line that is not JSON, when the application had disabled it; with
``pause_gc=False`` it is never touched."""

from __future__ import annotations

import gc
from typing import Any

import httpx
import pytest

from epic_fhir_async import BulkExportError, EpicFHIRClient, StaticTokenAuth
from epic_fhir_async.sandbox import EpicSandbox

from ..conftest import ParseRecorder
from .conftest import FAST, TYPES, advance_each_poll, make_client

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"


async def _lists(sandbox: EpicSandbox, group_id: str, rec: ParseRecorder, **options: Any) -> tuple[int, int]:
    """(resources in the manifest, resources in the lists), with only the lists' parses recorded."""
    async with make_client(sandbox, **options) as client:
        job = await client.bulk_export(group_id, types=TYPES, cadence=FAST)
        manifest = await job.wait(progress=advance_each_poll(sandbox))
        rec.enabled_during.clear()
        async with job.resources(concurrency=2) as stream:
            got = [len(batch) async for batch in stream.batches()]
    assert len(got) > 3  # several lists, so the collector was paused and resumed several times
    return sum(manifest.expected_counts().values()), sum(got)


async def test_every_list_is_parsed_with_the_gc_paused_and_the_collector_restored(
    parse_recorder: ParseRecorder, sandbox: EpicSandbox, group_id: str
) -> None:
    assert gc.isenabled()
    expected, got = await _lists(sandbox, group_id, parse_recorder)
    assert got == expected
    assert parse_recorder.enabled_during == [False] * expected  # every line, and only they, under the pause
    assert gc.isenabled()


async def test_pause_gc_false_never_touches_the_collector(
    parse_recorder: ParseRecorder, sandbox: EpicSandbox, group_id: str
) -> None:
    expected, got = await _lists(sandbox, group_id, parse_recorder, pause_gc=False)
    assert got == expected
    assert parse_recorder.enabled_during == [True] * expected


async def test_a_collector_disabled_by_the_application_stays_disabled(
    parse_recorder: ParseRecorder, sandbox: EpicSandbox, group_id: str
) -> None:
    gc.disable()
    try:
        expected, got = await _lists(sandbox, group_id, parse_recorder)
        assert got == expected
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_a_line_that_is_not_json_restores_the_collector_and_names_no_content(
    parse_recorder: ParseRecorder,
) -> None:
    url = f"{BASE}/files/a"
    body = b'{"resourceType": "Patient", "id": "1"}\n{"name": "Jane Secret\n'

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/$export"):
            return httpx.Response(202, headers={"Content-Location": f"{BASE}/status/1"})
        if "/status/" in request.url.path:
            return httpx.Response(200, json={"output": [{"type": "Patient", "url": url}]})
        return httpx.Response(200, content=body)

    transport = httpx.MockTransport(handler)
    async with EpicFHIRClient(BASE, auth=StaticTokenAuth("t"), transport=transport) as client:
        job = await client.bulk_export("g", cadence=FAST)
        await job.wait()

        async def read_lists() -> None:
            async with job.resources() as stream:
                async for _ in stream.batches():
                    pass

        parse_recorder.enabled_during.clear()
        with pytest.raises(BulkExportError, match="not valid JSON") as info:
            await read_lists()
    assert "Secret" not in str(info.value)
    assert parse_recorder.enabled_during == [False, False]  # the good line, then the bad one, in one pause
    assert gc.isenabled()
