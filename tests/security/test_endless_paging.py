"""A server whose next link changes every time (a counter) never repeats a URL, so the repeat check cannot stop
it: the issue's bench paged 30,000 times in 20 s with memory growing. A search fetches at most ``max_pages``
pages (the client's option, or one query's) and then raises PagingError naming both options."""

from __future__ import annotations

import itertools

import httpx
import pytest

from epic_fhir_async import ConfigurationError, EpicFHIRClient, PagingError, StaticTokenAuth
from epic_fhir_async._config import MAX_PAGES

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"


class Counter:
    """Every page links to a next page with a fresh ``sessionID`` (or stops after ``last`` pages)."""

    def __init__(self, last: int | None = None) -> None:
        self.pages = 0
        self.last = last
        self._ids = itertools.count(1)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.pages += 1
        n = next(self._ids)
        links = (
            []
            if self.last is not None and n >= self.last
            else [{"relation": "next", "url": f"{BASE}/Observation?sessionID={n}"}]
        )
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": links,
            "entry": [
                {"resource": {"resourceType": "Observation", "id": f"o{n}"}, "search": {"mode": "match"}}
            ],
        }
        return httpx.Response(200, json=bundle, headers={"content-type": "application/fhir+json"})


def _client(server: Counter, **options: object) -> EpicFHIRClient:
    return EpicFHIRClient(
        BASE,
        auth=StaticTokenAuth("t" * 20),
        transport=httpx.MockTransport(server),
        **options,  # type: ignore[arg-type]
    )


async def test_an_endless_next_link_stops_at_the_clients_page_cap() -> None:
    server = Counter()
    async with _client(server, max_pages=25) as client:
        seen: list[str] = []

        async def collect() -> None:
            async for resource in client.search("Observation", patient="p", category="laboratory"):
                seen.append(resource["id"])

        with pytest.raises(PagingError, match=r"stopped after 25 pages.*max_pages=.*with_max_pages") as info:
            await collect()
    assert server.pages == 25
    assert len(seen) == 25  # every page fetched was delivered before the error
    assert "sessionID" not in str(info.value)


async def test_a_query_can_set_its_own_cap_or_none() -> None:
    server = Counter()
    async with _client(server, max_pages=25) as client:
        query = client.search("Observation", patient="p", category="laboratory").with_max_pages(3)
        assert query.max_pages == 3
        assert query.where(code="x").max_pages == 3  # kept by the builder methods
        with pytest.raises(PagingError):
            await _drain(query.pages())
        assert server.pages == 3
        finite = Counter(last=40)
        async with _client(finite, max_pages=25) as other:
            uncapped = other.search("Observation", patient="p", category="laboratory").with_max_pages(None)
            assert len([r async for r in uncapped]) == 40  # the caller's explicit choice


async def test_the_default_cap_is_generous_for_epic() -> None:
    # 10,000 pages of Epic's 1000 entries are ten million resources (docs/epic-notes.md §3.5).
    assert MAX_PAGES == 10_000
    async with _client(Counter(last=3)) as client:
        assert client.search("Observation").max_pages == MAX_PAGES
        assert len([r async for r in client.search("Observation", patient="p", category="laboratory")]) == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_bad_caps_are_refused_before_any_request(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_pages"):
        EpicFHIRClient(BASE, max_pages=bad)  # type: ignore[arg-type]
    client = EpicFHIRClient(BASE)
    with pytest.raises(ConfigurationError, match="with_max_pages"):
        client.search("Observation").with_max_pages(bad)  # type: ignore[arg-type]


async def _drain(pages: object) -> None:
    async for _ in pages:  # type: ignore[attr-defined]
        pass
