"""``query.pages()`` hands out pages that are parsed when first read: the caller's loop variable keeps the
previous page until ``__anext__`` returns, so a page parsed inside ``__anext__`` was built while the previous
one was still alive (two pages at once, and 10-35% more CPU: docs/performance.md). A body that is not a
Bundle still fails the search, when the page is read or, if it never is, when the walk goes on."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import tracemalloc
from collections.abc import Awaitable, Callable

import httpx
import orjson
import pytest

from epic_fhir_async import EpicFHIRClient, EpicFHIRError, StaticTokenAuth
from epic_fhir_async.pull import PullFailure

BASE = "https://fhir.example.org/api/FHIR/R4"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
PAGES = 6
PER_PAGE = 1500


def _bundle(page: int, *, per_page: int = PER_PAGE, last: int = PAGES) -> bytes:
    links = [{"relation": "next", "url": f"{BASE}/Observation?page={page + 1}"}] if page < last else []
    entries = [
        {
            "resource": {
                "resourceType": "Observation",
                "id": f"p{page}-{i}",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "valueQuantity": {"value": i, "unit": "/min"},
            },
            "search": {"mode": "match"},
        }
        for i in range(per_page)
    ]
    return orjson.dumps({"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries})


def _handler(bodies: dict[int, bytes]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        return httpx.Response(200, content=bodies[page], headers=FHIR_JSON)

    return handler


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> EpicFHIRClient:
    return EpicFHIRClient(BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(handler))


async def _peak(walk: Callable[[EpicFHIRClient], Awaitable[int]]) -> tuple[int, int]:
    bodies = {page: _bundle(page) for page in range(1, PAGES + 1)}
    async with _client(_handler(bodies)) as client:
        await walk(client)  # warm: connection, caches
        tracemalloc.start()
        try:
            count = await walk(client)
            return count, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


async def _resources(client: EpicFHIRClient) -> int:
    n = 0
    async for _ in client.search("Observation", patient="p1", category="vital-signs"):
        n += 1
    return n


async def _pages(client: EpicFHIRClient) -> int:
    n = 0
    async for page in client.search("Observation", patient="p1", category="vital-signs").pages():
        n += len(page.resources)  # the natural loop: `page` keeps the previous page until the next arrives
    return n


@pytest.mark.anyio
async def test_the_natural_pages_loop_holds_one_page_at_a_time_like_iterating_resources() -> None:
    count_resources, peak_resources = await _peak(_resources)
    count_pages, peak_pages = await _peak(_pages)
    assert count_resources == count_pages == PAGES * PER_PAGE
    # Two pages alive at once (the previous one in the loop variable while the next was parsed) measured
    # 1.39x the peak of iterating resources; one page at a time measures 1.00x.
    assert peak_pages < 1.15 * peak_resources, (peak_pages, peak_resources)


@pytest.mark.anyio
async def test_a_page_that_is_not_a_bundle_fails_when_read_and_again_on_every_read() -> None:
    bodies = {1: _bundle(1, per_page=2, last=2), 2: orjson.dumps({"resourceType": "Patient", "id": "x"})}
    async with _client(_handler(bodies)) as client:
        seen: list[str] = []
        failures: list[str] = []
        async for page in client.search("Observation", patient="p1", category="vital-signs").pages():
            try:
                seen += [r["id"] for r in page.resources]
            except EpicFHIRError as exc:
                failures.append(str(exc))
                with pytest.raises(EpicFHIRError, match="expected a FHIR Bundle"):
                    _ = page.next_url
                break
    assert seen == ["p1-0", "p1-1"]
    assert len(failures) == 1
    assert "expected a FHIR Bundle" in failures[0]


@pytest.mark.anyio
async def test_a_page_never_read_still_fails_the_walk_when_it_goes_on() -> None:
    bodies = {1: b'{"resourceType": "Bundle", "entry": [', 2: _bundle(2, per_page=2, last=2)}
    handed_out: list[object] = []

    async def walk(client: EpicFHIRClient) -> None:
        async for page in client.search("Observation", patient="p1", category="vital-signs").pages():
            handed_out.append(page)  # never read: the walk needs its next link, so it parses it
            del page

    async with _client(_handler(bodies)) as client:
        with pytest.raises(EpicFHIRError, match="invalid JSON"):
            await walk(client)
        assert len(handed_out) == 1
        with pytest.raises(EpicFHIRError, match="invalid JSON"):
            await _resources(client)


@pytest.mark.anyio
async def test_a_content_type_that_is_not_json_fails_before_the_page_is_handed_out() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>sign in</html>", headers={"Content-Type": "text/html"})

    async with _client(handler) as client:
        pages = client.search("Observation", patient="p1", category="vital-signs").pages()
        with pytest.raises(EpicFHIRError, match="expected FHIR JSON"):
            await pages.__anext__()


@pytest.mark.anyio
async def test_a_copy_a_pickle_or_a_replace_of_a_page_works_like_an_ordinary_page() -> None:
    bodies = {1: _bundle(1, per_page=3, last=1)}
    async with _client(_handler(bodies)) as client:
        pages = client.search("Observation", patient="p1", category="vital-signs").pages()
        page = await pages.__anext__()
        assert repr(page) == "Page(not read yet)"  # a repr neither parses nor fails
        copied = copy.copy(page)
        restored = pickle.loads(pickle.dumps(page))
        replaced = dataclasses.replace(page, resources=page.resources[:1])
        assert [r["id"] for r in replaced.resources] == ["p1-0"]
        assert replaced.next_url == page.next_url
        assert copied == page
        assert restored == page
        assert page == restored
        assert [r["id"] for r in restored.resources] == ["p1-0", "p1-1", "p1-2"]
        assert repr(restored) == repr(page)
        await pages.aclose()


@pytest.mark.anyio
async def test_a_pull_stream_whose_page_is_not_a_bundle_is_collected_and_the_others_finish() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("patient") == "bad":
            return httpx.Response(200, content=b'{"resourceType": "Patient"}', headers=FHIR_JSON)
        return httpx.Response(200, content=_bundle(1, per_page=2, last=1), headers=FHIR_JSON)

    async with (
        _client(handler) as client,
        client.pull(["good", "bad", "fine"], ["Condition"], on_error="collect") as stream,
    ):
        items = [item async for item in stream]
    assert sorted({item.patient_id for item in items}) == ["fine", "good"]
    assert [(f.patient_id, f.query) for f in stream.failures] == [("bad", "Condition")]
    failure = stream.failures[0]
    assert isinstance(failure, PullFailure)
    assert "expected a FHIR Bundle" in str(failure.error)
