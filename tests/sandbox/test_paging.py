"""Paging: 1000-entry default pages, sessionID next links, paged totals, _summary=count, 4113 expiry."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import DERRICK, issue_codes

pytestmark = pytest.mark.anyio
VITALS: dict[str, Any] = {"patient": DERRICK, "category": "vital-signs"}


def next_link(page: dict[str, Any]) -> str:
    (url,) = [str(link["url"]) for link in page["link"] if link["relation"] == "next"]
    return url


async def _walk(http: httpx.AsyncClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    pages = []
    url: str | None = None
    while True:
        response = await (http.get(url) if url else http.get("Observation", params=params))
        assert response.status_code == 200
        page = response.json()
        pages.append(page)
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            return pages
        url = nxt[0]


async def test_default_page_is_1000_and_walk_matches_count(http: httpx.AsyncClient, sb: EpicSandbox) -> None:
    count = (await http.get("Observation", params={**VITALS, "_summary": "count"})).json()
    assert "entry" not in count
    assert count["total"] > 1000
    pages = await _walk(http, VITALS)
    assert len(pages[0]["entry"]) == 1000
    assert pages[0]["total"] == 1000  # paged: total is the entries on this page
    ids = [e["resource"]["id"] for p in pages for e in p["entry"] if e["search"]["mode"] == "match"]
    assert len(ids) == len(set(ids)) == count["total"]
    pattern = re.compile(re.escape(f"{sb.base_url}/Observation?sessionID=") + r"\d+-[0-9A-F]{32}$")
    for page in pages:
        assert {link["relation"] for link in page["link"]} <= {"self", "next"}
        for link in page["link"]:
            if link["relation"] == "next":
                assert pattern.match(link["url"])
        assert page["total"] == len([e for e in page["entry"] if e["search"]["mode"] == "match"])


async def test_count_is_honoured_and_capped(http: httpx.AsyncClient) -> None:
    pages = await _walk(http, {**VITALS, "_count": 400})
    assert [len(p["entry"]) for p in pages[:2]] == [400, 400]
    capped = (await http.get("Observation", params={**VITALS, "_count": 5000})).json()
    assert len(capped["entry"]) == 1000


async def test_session_expires_after_ttl(http: httpx.AsyncClient, sb: EpicSandbox) -> None:
    first = (await http.get("Observation", params={**VITALS, "_count": 100})).json()
    next_url = next_link(first)
    assert (await http.get(next_url)).status_code == 200
    sb.clock.advance(sb.config.session_ttl + 1)
    expired = await http.get(next_url)
    assert expired.status_code == 400
    issue = expired.json()["issue"][0]
    assert issue["severity"] == "fatal"
    assert issue_codes(expired.json()) == ["4113"]
    assert issue["details"]["text"] == "Session ID for cached search results has expired."


async def test_expire_sessions_and_unknown_session(http: httpx.AsyncClient, sb: EpicSandbox) -> None:
    first = (await http.get("Observation", params={**VITALS, "_count": 100})).json()
    sb.expire_sessions()
    assert (await http.get(next_link(first))).status_code == 400
    bogus = await http.get("Observation", params={"sessionID": "1-" + "A" * 32})
    assert bogus.status_code == 400
    assert issue_codes(bogus.json()) == ["4113"]


async def test_repeated_page_is_identical(http: httpx.AsyncClient) -> None:
    first = (await http.get("Observation", params={**VITALS, "_count": 300})).json()
    url = next_link(first)
    assert (await http.get(url)).content == (await http.get(url)).content
