"""``async for resource in query`` (with or without prefetch) keeps no reference to a finished page while the
next one is fetched: a page held until the next parse is freed cold in the cache, and doubles what is alive."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import httpx
import orjson
import pytest

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth

BASE = "https://fhir.example.org/api/FHIR/R4"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _bundle(prefix: str, next_url: str | None) -> bytes:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    entries = [
        {"resource": {"resourceType": "Observation", "id": f"{prefix}{i}"}, "search": {"mode": "match"}}
        for i in range(3)
    ]
    return orjson.dumps({"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries})


@pytest.mark.anyio
@pytest.mark.parametrize("prefetch", [False, True])
async def test_a_finished_page_is_freed_while_the_next_one_is_fetched(prefetch: bool) -> None:
    second_requested, released = anyio.Event(), anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if "page=2" in str(request.url):
            second_requested.set()
            await released.wait()
            return httpx.Response(200, content=_bundle("b", None), headers=FHIR_JSON)
        return httpx.Response(200, content=_bundle("a", f"{BASE}/Observation?page=2"), headers=FHIR_JSON)

    kept: list[dict[str, Any]] = []
    references_while_waiting: list[int] = []

    async def check_then_release() -> None:
        await second_requested.wait()
        await anyio.wait_all_tasks_blocked()
        # The list and getrefcount's argument; a live page adds its resources list and its Bundle entry.
        references_while_waiting.append(sys.getrefcount(kept[0]))
        released.set()

    ids: list[str] = []
    async with (
        EpicFHIRClient(BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(handler)) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(check_then_release)
        query = client.search("Observation", patient="p1", category="vital-signs").with_prefetch(prefetch)
        async for resource in query:
            ids.append(resource["id"])
            if not kept:
                kept.append(resource)
            del resource

    assert ids == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert references_while_waiting == [2]
