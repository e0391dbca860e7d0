"""Parsing a body pauses Python's cyclic GC and leaves it exactly as it was: after success, error and
cancellation, when it was off before, and with parses running in several threads at once."""

from __future__ import annotations

import gc
import threading
from typing import Any

import anyio
import httpx
import orjson
import pytest

from epic_fhir_async import EpicFHIRClient, EpicFHIRError, StaticTokenAuth, _json

from ..conftest import ParseRecorder

BASE = "https://fhir.example.org/api/FHIR/R4"


def _bundle(n: int, next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    entries = [
        {"resource": {"resourceType": "Observation", "id": f"o{i}"}, "search": {"mode": "match"}}
        for i in range(n)
    ]
    return {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}


def _client(handler: Any, **options: Any) -> EpicFHIRClient:
    return EpicFHIRClient(BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(handler), **options)


def _pages(request: httpx.Request) -> httpx.Response:
    page2 = "page=2" in str(request.url)
    body = _bundle(3) if page2 else _bundle(3, f"{BASE}/Observation?page=2")
    if page2:
        for e in body["entry"]:
            e["resource"]["id"] += "b"
    return httpx.Response(200, json=body, headers={"Content-Type": "application/fhir+json"})


@pytest.mark.anyio
async def test_a_search_parses_with_the_gc_paused_and_restores_it(parse_recorder: ParseRecorder) -> None:
    assert gc.isenabled()
    async with _client(_pages) as client:
        found = [r async for r in client.search("Observation", patient="p", category="laboratory")]
    assert len(found) == 6
    assert parse_recorder.enabled_during == [False, False]
    assert gc.isenabled()


@pytest.mark.anyio
async def test_a_collector_disabled_by_the_application_stays_disabled(parse_recorder: ParseRecorder) -> None:
    gc.disable()
    try:
        async with _client(_pages) as client:
            assert (
                len([r async for r in client.search("Observation", patient="p", category="laboratory")]) == 6
            )
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.anyio
async def test_the_collector_is_restored_when_the_body_is_not_json(parse_recorder: ParseRecorder) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{not json", headers={"Content-Type": "application/fhir+json"})

    async with _client(handler) as client:
        with pytest.raises(EpicFHIRError, match="invalid JSON"):
            await client.read("Patient", "p1")
    assert parse_recorder.enabled_during == [False]
    assert gc.isenabled()


@pytest.mark.anyio
async def test_pause_gc_false_never_touches_the_collector(parse_recorder: ParseRecorder) -> None:
    async with _client(_pages, pause_gc=False) as client:
        assert len([r async for r in client.search("Observation", patient="p", category="laboratory")]) == 6
    assert parse_recorder.enabled_during == [True, True]


@pytest.mark.anyio
async def test_a_cancelled_search_leaves_the_collector_enabled(parse_recorder: ParseRecorder) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        if "page=2" in str(request.url):
            await anyio.sleep(10)
        return _pages(request)

    async with _client(slow) as client:
        with anyio.move_on_after(0.2):
            async for _ in client.search("Observation", patient="p", category="laboratory"):
                pass
    assert gc.isenabled()


def test_pages_and_lists_parsed_in_several_threads_restore_the_collector_once() -> None:
    body = orjson.dumps(_bundle(2000))
    lines = [orjson.dumps(entry["resource"]) for entry in _bundle(2000)["entry"]]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            start.wait()
            for _ in range(20):
                if n % 2:  # bulk lists (stream.batches()) and pages pause and resume the same collector
                    assert len(_json.loads_each_pausing_gc(lines)) == 2000
                else:
                    assert len(_json.loads_pausing_gc(body)["entry"]) == 2000
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert gc.isenabled()
