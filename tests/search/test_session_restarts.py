"""Restarts of a search whose paging session expired (Epic's 4113): a restart yields nothing twice, even when
ids are missing or not strings; a long search survives several expiries as long as each restart makes
progress, and an expiry before a restart delivered anything new raises."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, PagingError, StaticTokenAuth
from epic_fhir_async._retry import RetryPolicy

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> EpicFHIRClient:
    return EpicFHIRClient(
        BASE,
        auth=StaticTokenAuth("t0ken"),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=1),
    )


def _expired() -> httpx.Response:
    issue = {
        "severity": "fatal",
        "code": "processing",
        "details": {"coding": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369", "code": "4113"}]},
    }
    return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": [issue]})


async def test_restart_after_4113_with_odd_ids_yields_nothing_twice() -> None:
    # Ids that are missing or not strings take the slow path of the seen-id bookkeeping.
    first: list[dict[str, Any]] = [{"resourceType": "Observation"}, {"resourceType": "Observation", "id": 7}]
    second: list[dict[str, Any]] = [{"resourceType": "Observation", "id": "b"}]
    expired_once: list[bool] = []

    def bundle(resources: list[dict[str, Any]], next_url: str | None) -> httpx.Response:
        links = [{"relation": "next", "url": next_url}] if next_url else []
        entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
        return httpx.Response(200, json={"resourceType": "Bundle", "link": links, "entry": entries})

    def handler(request: httpx.Request) -> httpx.Response:
        if "sessionID" not in str(request.url):
            return bundle(first, f"{BASE}/Observation?sessionID=2-A")
        if not expired_once:
            expired_once.append(True)
            return _expired()
        return bundle(second, None)

    async with _client(handler) as client:
        got = [r async for r in client.search("Observation", patient="x", category="laboratory")]
    assert got == [*first, *second]


def _page(ids: range, next_url: str | None) -> httpx.Response:
    bundle: dict[str, object] = {
        "resourceType": "Bundle",
        "entry": [{"resource": {"resourceType": "Observation", "id": f"o{i}"}} for i in ids],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return httpx.Response(200, json=bundle, headers={"content-type": "application/fhir+json"})


EXPIRED = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "fatal",
            "code": "processing",
            "details": {"coding": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369", "code": "4113"}]},
        }
    ],
}


class Pages:
    """Four pages of three; ``expire``: page numbers whose next request answers 4113, in order, each once."""

    def __init__(self, expire: list[int]) -> None:
        self.expire = expire
        self.first_pages = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        session = request.url.params.get("sessionID")
        page = int(session) if session else 0
        if session and self.expire and self.expire[0] == page:
            self.expire.pop(0)
            return httpx.Response(400, json=EXPIRED, headers={"content-type": "application/fhir+json"})
        self.first_pages += page == 0
        return _page(
            range(page * 3, page * 3 + 3), f"{BASE}/Observation?sessionID={page + 1}" if page < 3 else None
        )


async def _collect(query: Any, into: list[str]) -> None:
    async for resource in query:
        into.append(resource["id"])


async def test_a_long_search_survives_several_expiries_when_each_restart_makes_progress() -> None:
    # Each restart that delivered new pages earns another: a long stream outlives any number of 4113s.
    pages = Pages(expire=[1, 2, 3])
    async with EpicFHIRClient(
        BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(pages.handler)
    ) as c:
        ids = [r["id"] async for r in c.search("Observation", patient="p", category="laboratory")]
    assert ids == [f"o{i}" for i in range(12)]
    assert pages.first_pages == 4  # the first request and three restarts


async def test_an_expiry_before_the_restart_delivered_anything_new_still_raises() -> None:
    pages = Pages(expire=[2, 1])  # the restart dies on page 1, which it had already delivered
    async with EpicFHIRClient(
        BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(pages.handler)
    ) as c:
        got: list[str] = []
        with pytest.raises(PagingError, match="expired twice"):
            await _collect(c.search("Observation", patient="p", category="laboratory"), got)
    assert got == [f"o{i}" for i in range(6)]
