"""SearchQuery: paging, outcomes, hostile next links, loops, 4113 restart, prefetch, first/count, POST."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import anyio
import httpx
import pytest

from epic_fhir_async import (
    EpicFHIRClient,
    EpicFHIRError,
    PagingError,
    SessionExpired,
    StaticTokenAuth,
    UnsafeURLError,
)
from epic_fhir_async._bundle import next_link, parse_page
from epic_fhir_async._retry import RETRY_SAFE

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"
TOKEN = "tok-SECRET"
CT = {"Content-Type": "application/fhir+json"}


def obs(i: int) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final"}


def bundle(ids: range, next_url: str | None, *, outcome: bool = False) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [{"resource": obs(i), "search": {"mode": "match"}} for i in ids]
    if outcome:
        entries.append(
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "warning", "code": "suppressed", "diagnostics": "sub-type hidden"}
                    ],
                },
                "search": {"mode": "outcome"},
            }
        )
    links = [{"relation": "self", "url": f"{BASE}/Observation"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {"resourceType": "Bundle", "type": "searchset", "total": len(ids), "link": links, "entry": entries}


EXPIRED = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "fatal",
            "code": "processing",
            "details": {
                "coding": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369", "code": "4113"}],
                "text": "Session ID for cached search results has expired.",
            },
        }
    ],
}


class Server:
    """Three pages of 3 resources; ``sessionID`` next links like Epic's."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.expire_on: list[int] = []  # page numbers whose next call answers 4113 (consumed)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        session = request.url.params.get("sessionID")
        page = int(session) if session else 0
        if session and self.expire_on and self.expire_on[0] == page:
            self.expire_on.pop(0)
            return httpx.Response(404, json=EXPIRED, headers=CT)
        if request.url.params.get("_summary") == "count":
            return httpx.Response(
                200, json={"resourceType": "Bundle", "type": "searchset", "total": 9}, headers=CT
            )
        nxt = f"{BASE}/Observation?sessionID={page + 1}" if page < 2 else None
        return httpx.Response(
            200, json=bundle(range(page * 3, page * 3 + 3), nxt, outcome=page == 1), headers=CT
        )


async def collect(query: Any, into: list[str]) -> None:
    """Append every yielded id to ``into`` (so a test can check what came before an error)."""
    async for resource in query:
        into.append(resource["id"])


async def drain_pages(query: Any) -> None:
    async with aclosing(query.pages()) as pages:
        async for _ in pages:
            pass


def client(handler: Any) -> EpicFHIRClient:
    # These tests are about paging mechanics on any server: Epic's search requirements are not theirs.
    return EpicFHIRClient(
        BASE, transport=httpx.MockTransport(handler), auth=StaticTokenAuth(TOKEN), epic_rules=False
    )


async def test_async_for_walks_every_page_and_never_yields_outcomes() -> None:
    server = Server()
    async with client(server.handler) as c:
        query = c.search("Observation", patient="p1", category="vital-signs")
        ids = [r["id"] async for r in query]
        assert ids == [f"o{i}" for i in range(9)]
        pages = [p async for p in query.pages()]
    assert [len(p.outcomes) for p in pages] == [0, 1, 0]
    assert pages[1].outcomes[0].issues[0].diagnostics == "sub-type hidden"
    assert pages[0].next_url == f"{BASE}/Observation?sessionID=1"
    assert pages[2].next_url is None
    assert server.requests[0].url.params["patient"] == "p1"
    assert "patient" not in server.requests[1].url.params  # next link followed verbatim


async def test_query_is_immutable() -> None:
    async with client(Server().handler) as c:
        q1 = c.search("Observation", patient="p1")
        q2 = q1.where(category="laboratory")
        q3 = q2.where(patient=None)
    assert q1.params == {"patient": "p1"}
    assert q2.params == {"patient": "p1", "category": "laboratory"}
    assert q3.params == {"category": "laboratory"}


async def test_first_and_count() -> None:
    server = Server()
    async with client(server.handler) as c:
        query = c.search("Observation", patient="p1", category="vital-signs")
        first = await query.first()
        assert first is not None
        assert first["id"] == "o0"
        assert server.requests[-1].url.params["_count"] == "1"
        assert await query.count() == 9
        assert server.requests[-1].url.params["_summary"] == "count"


async def test_hostile_next_link_never_receives_the_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json=bundle(range(2), "https://evil.example.com/Observation?sessionID=1"), headers=CT
        )

    async with client(handler) as c:
        got: list[str] = []
        with pytest.raises(UnsafeURLError):
            await collect(c.search("Observation", patient="p"), got)
    assert got == ["o0", "o1"]
    assert [r.url.host for r in seen] == ["fhir.example.org"]


async def test_relative_next_link_resolves_against_the_base() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        nxt = "Observation?sessionID=2" if len(seen) == 1 else None
        return httpx.Response(200, json=bundle(range(1), nxt), headers=CT)

    async with client(handler) as c:
        assert len([r async for r in c.search("Observation")]) == 2
    assert seen[1] == f"{BASE}/Observation?sessionID=2"


async def test_repeating_next_link_stops_with_paging_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=bundle(range(1), f"{BASE}/Observation?sessionID=loop"), headers=CT)

    async with client(handler) as c:
        with pytest.raises(PagingError, match="repeats"):
            await collect(c.search("Observation"), [])


async def test_expired_session_restarts_once_without_duplicates_or_losses() -> None:
    server = Server()
    server.expire_on = [2]
    async with client(server.handler) as c:
        ids = [r["id"] async for r in c.search("Observation", patient="p1")]
    assert ids == [f"o{i}" for i in range(9)]
    firsts = [r for r in server.requests if "sessionID" not in r.url.params]
    assert len(firsts) == 2  # one restart from the first page


async def test_second_expiry_raises_session_expired() -> None:
    server = Server()
    server.expire_on = [1, 1]
    async with client(server.handler) as c:
        got: list[str] = []
        with pytest.raises(SessionExpired):
            await collect(c.search("Observation", patient="p1"), got)
    assert got == ["o0", "o1", "o2"]


async def test_post_search_uses_form_body_and_is_marked_retry_safe() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=bundle(range(2), None), headers=CT)

    async with client(handler) as c:
        ids = [r["id"] async for r in c.search("Observation", patient="SECRET").using_post()]
    assert ids == ["o0", "o1"]
    request = seen[0]
    assert request.method == "POST"
    assert request.url.path.endswith("/Observation/_search")
    assert request.url.query == b""
    assert request.content == b"patient=SECRET"
    assert request.extensions[RETRY_SAFE] is True


async def test_prefetch_stays_one_page_ahead_and_is_cancelled_on_close() -> None:
    served: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("sessionID", "0"))
        served.append(page)
        return httpx.Response(
            200, json=bundle(range(page, page + 1), f"{BASE}/Observation?sessionID={page + 1}"), headers=CT
        )

    async with client(handler) as c:
        query = c.search("Observation").with_prefetch()
        async with aclosing(query.pages()) as pages:
            first = await pages.__anext__()
            assert first.resources[0]["id"] == "o0"
            for _ in range(20):  # let the producer run as far as it can
                await anyio.sleep(0)
            assert served == [0, 1]  # exactly one page ahead, never more
        # closed: the producer is cancelled, nothing more is fetched
        for _ in range(20):
            await anyio.sleep(0)
        assert served == [0, 1]
        ids = []
        async with aclosing(query.pages()) as pages:
            async for page in pages:
                ids.append(page.resources[0]["id"])
                if len(ids) == 5:
                    break
        assert ids == ["o0", "o1", "o2", "o3", "o4"]


async def test_prefetch_passes_errors_to_the_consumer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=bundle(range(1), f"{BASE}/Observation?sessionID=x"), headers=CT)

    async with client(handler) as c:
        with pytest.raises(PagingError):
            await drain_pages(c.search("Observation").with_prefetch())


def test_bundle_parsing_is_tolerant() -> None:
    assert next_link({"link": "nonsense"}) is None
    assert (
        next_link({"link": [{"relation": "previous", "url": "x"}, {"relation": "next", "url": "y"}]}) == "y"
    )
    page = parse_page(
        {
            "resourceType": "Bundle",
            "entry": [
                {"fullUrl": "x"},  # no resource: skipped
                "junk",
                {"resource": obs(1)},  # no search.mode: a match
                {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
            ],
        }
    )
    assert [r["id"] for r in page.resources] == ["o1"]
    assert [r["id"] for r in page.included] == ["p"]
    assert page.total is None
    assert page.next_url is None
    empty = parse_page({"resourceType": "Bundle"})
    assert empty.resources == []
    assert empty.outcomes == []
    with pytest.raises(EpicFHIRError, match="Bundle"):
        parse_page({"resourceType": "OperationOutcome"})
    with pytest.raises(EpicFHIRError):
        parse_page([1, 2])


async def test_breaking_out_of_async_for_fetches_no_further_page() -> None:
    server = Server()
    async with client(server.handler) as c:
        got = []
        async for resource in c.search("Observation", patient="p1"):
            got.append(resource["id"])
            if len(got) == 2:
                break
        await anyio.sleep(0)
    assert got == ["o0", "o1"]
    assert len(server.requests) == 1
