"""Parsing a body pauses Python's cyclic GC and leaves it exactly as it was: after success, error and
cancellation, when it was off before, and with parses running in several threads at once."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import orjson
import pytest

from epic_fhir_async import EpicFHIRClient, EpicFHIRError, StaticTokenAuth, _json

BASE = "https://fhir.example.org/api/FHIR/R4"


def _bundle(n: int, next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    entries = [
        {"resource": {"resourceType": "Observation", "id": f"o{i}"}, "search": {"mode": "match"}}
        for i in range(n)
    ]
    return {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}


class _Recorder:
    """orjson.loads, noting whether the collector was enabled while it ran."""

    def __init__(self) -> None:
        self.enabled_during: list[bool] = []

    def loads(self, data: Any) -> Any:
        self.enabled_during.append(gc.isenabled())
        return orjson.loads(data)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Recorder]:
    rec = _Recorder()
    monkeypatch.setattr(_json, "orjson", type("O", (), {"loads": staticmethod(rec.loads)}))
    monkeypatch.setattr(_json, "loads", rec.loads)  # what pause_gc=False uses
    was = gc.isenabled()
    yield rec
    assert gc.isenabled() == was  # whatever the test did, the collector is as the test found it
    gc.enable()


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
async def test_a_search_parses_with_the_gc_paused_and_restores_it(recorder: _Recorder) -> None:
    assert gc.isenabled()
    async with _client(_pages) as client:
        found = [r async for r in client.search("Observation", patient="p", category="laboratory")]
    assert len(found) == 6
    assert recorder.enabled_during == [False, False]
    assert gc.isenabled()


@pytest.mark.anyio
async def test_a_collector_disabled_by_the_application_stays_disabled(recorder: _Recorder) -> None:
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
async def test_the_collector_is_restored_when_the_body_is_not_json(recorder: _Recorder) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{not json", headers={"Content-Type": "application/fhir+json"})

    async with _client(handler) as client:
        with pytest.raises(EpicFHIRError, match="invalid JSON"):
            await client.read("Patient", "p1")
    assert recorder.enabled_during == [False]
    assert gc.isenabled()


@pytest.mark.anyio
async def test_pause_gc_false_never_touches_the_collector(recorder: _Recorder) -> None:
    async with _client(_pages, pause_gc=False) as client:
        assert len([r async for r in client.search("Observation", patient="p", category="laboratory")]) == 6
    assert recorder.enabled_during == [True, True]


@pytest.mark.anyio
async def test_a_cancelled_search_leaves_the_collector_enabled(recorder: _Recorder) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        if "page=2" in str(request.url):
            await anyio.sleep(10)
        return _pages(request)

    async with _client(slow) as client:
        with anyio.move_on_after(0.2):
            async for _ in client.search("Observation", patient="p", category="laboratory"):
                pass
    assert gc.isenabled()


def test_parses_in_several_threads_restore_the_collector_once() -> None:
    body = orjson.dumps(_bundle(2000))
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            start.wait()
            for _ in range(20):
                assert len(_json.loads_pausing_gc(body)["entry"]) == 2000
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert gc.isenabled()
