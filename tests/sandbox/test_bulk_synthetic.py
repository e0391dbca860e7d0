"""Synthetic Observations for big exports: generated on the fly, streamed in bounded chunks, counts exact."""

from __future__ import annotations

import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import pytest

from epic_fhir_async import _json
from epic_fhir_async.sandbox._bulk import BulkExports
from epic_fhir_async.sandbox._bulk_files import CHUNK_BYTES
from epic_fhir_async.sandbox._clock import SandboxClock
from epic_fhir_async.sandbox._http import Request, Response

pytestmark = pytest.mark.anyio

BASE = "http://127.0.0.1:8765/interconnect-fhir-oauth/api/FHIR/R4"
GROUP = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"
MEMBERS = {"pat-a", "pat-b", "pat-c"}


def start(bulk: BulkExports, clock: SandboxClock, query: str) -> dict[str, Any]:
    request = Request(
        method="GET",
        path=f"/interconnect-fhir-oauth/api/FHIR/R4/Group/{GROUP}/$export",
        query=parse_qsl(query),
        headers={"prefer": "respond-async", "accept": "application/fhir+json"},
        raw_query=query,
    )
    status_url = bulk.kickoff(request, "client-1", GROUP).header("content-location") or ""
    clock.advance(bulk.export_seconds)
    manifest: dict[str, Any] = _json.loads(bulk.handle(request, "client-1", status_url[len(BASE) + 1 :]).body)
    return manifest


def fetch(bulk: BulkExports, url: str) -> Response:
    response = bulk.handle(Request(method="GET", path="/"), "client-1", url[len(BASE) + 1 :])
    assert response.status == 200
    assert response.stream is not None
    return response


async def test_synthetic_observations_stream_in_bounded_chunks(
    make_bulk: Callable[..., BulkExports], clock: SandboxClock, stats: Counter[str]
) -> None:
    bulk = make_bulk(synthetic_observations=30_000, synthetic_per_file=20_000)
    manifest = start(bulk, clock, "_type=Observation")
    outputs = manifest["output"]
    assert [e["count"] for e in outputs] == [10, 20_000, 10_000]  # the real ones, then the synthetic files
    ids: set[str] = set()
    for entry in outputs[1:]:
        response = fetch(bulk, entry["url"])
        assert response.stream is not None
        lines = 0
        chunks = 0
        async for chunk in response.stream:
            chunks += 1
            assert len(chunk) < CHUNK_BYTES + 4096  # never much more than one chunk held at a time
            for line in chunk.splitlines():
                resource = _json.loads(line)
                assert resource["resourceType"] == "Observation"
                assert resource["subject"]["reference"].removeprefix("Patient/") in MEMBERS
                assert resource["category"][0]["coding"][0]["code"] == "vital-signs"
                ids.add(resource["id"])
                lines += 1
            assert chunk.endswith(b"\n")  # chunks end on line boundaries
        assert lines == entry["count"]
        assert chunks > 10
    assert len(ids) == 30_000  # every generated line has its own id
    assert all(len(i) == 45 for i in ids)  # Epic's long Observation id length
    assert stats["bulk_bytes_served"] > 30_000 * 300


async def test_synthetic_output_is_not_held_in_memory(
    make_bulk: Callable[..., BulkExports], clock: SandboxClock
) -> None:
    bulk = make_bulk(synthetic_observations=60_000, synthetic_per_file=60_000)
    manifest = start(bulk, clock, "_type=Observation")
    outputs = manifest["output"]
    fetch(bulk, outputs[1]["url"])  # builds the synthetic pool outside the measured window
    response = fetch(bulk, outputs[1]["url"])
    assert response.stream is not None
    total = 0
    tracemalloc.start()
    try:
        async for chunk in response.stream:
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 20 * 1024 * 1024  # a file of tens of megabytes ...
    assert peak < 2 * 1024 * 1024  # ... streamed with a couple of chunks' worth of memory


async def test_synthetic_observations_skip_filtered_exports(
    make_bulk: Callable[..., BulkExports], clock: SandboxClock
) -> None:
    bulk = make_bulk(synthetic_observations=500)
    plain = start(bulk, clock, "_type=Patient")
    assert [e["type"] for e in plain["output"]] == ["Patient"]
    filtered = start(
        make_bulk(synthetic_observations=500),
        clock,
        "_type=Observation&_typeFilter=Observation?category=laboratory",
    )
    assert [e["count"] for e in filtered["output"]] == [2]
