"""What the hot-path optimisations must not change (speed itself lives in ``benchmarks/``).

* ``async for`` over a search drops a finished page before it fetches the next (flat memory, and parsing a
  page while the previous one is alive costs CPU), yet still yields every match once;
* ``parse_page`` decides ``search.mode == "match"`` without looking inside the resource;
* the 4113 restart skips what was yielded even when ids are missing or not strings;
* a bulk file read in hand-offs of several chunks resumes after a dropped connection with every line once.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth
from epic_fhir_async._bulk_read import file_batches
from epic_fhir_async._bundle import Page, parse_page
from epic_fhir_async._retry import RetryPolicy
from epic_fhir_async._search import _Resources

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> EpicFHIRClient:
    return EpicFHIRClient(
        BASE,
        auth=StaticTokenAuth("t0ken"),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=1),
    )


class _Resource(dict[str, Any]):
    """A dict that can be weakly referenced, to see when the SDK lets go of a page."""


class _Pages:
    """Three pages of three resources; records how many of the previous page were alive at each fetch."""

    def __init__(self) -> None:
        self.fetched = 0
        self.refs: list[weakref.ref[_Resource]] = []
        self.alive_at_fetch: list[int] = []

    def __aiter__(self) -> _Pages:
        return self

    async def __anext__(self) -> Page:
        self.alive_at_fetch.append(sum(ref() is not None for ref in self.refs))
        if self.fetched == 3:
            raise StopAsyncIteration
        self.fetched += 1
        resources: list[dict[str, Any]] = [_Resource(id=f"{self.fetched}-{i}") for i in range(3)]
        self.refs = [weakref.ref(r) for r in resources if isinstance(r, _Resource)]
        return Page(resources, [], [], None, None, {})

    async def aclose(self) -> None:
        pass


async def test_a_finished_page_is_dropped_before_the_next_fetch() -> None:
    pages = _Pages()
    seen = [r["id"] async for r in _Resources(pages)]
    assert seen == [f"{p}-{i}" for p in (1, 2, 3) for i in range(3)]
    # Only the resource the caller itself still holds (the comprehension's variable) may be alive when the
    # next page is fetched; an iterator holding on to the finished page would keep all 3.
    assert pages.alive_at_fetch == [0, 1, 1, 1]


def test_match_mode_decides_without_the_resource_type() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "processing"}]}
    page = parse_page(
        {
            "resourceType": "Bundle",
            "entry": [
                {"resource": outcome, "search": {"mode": "match"}},  # explicitly data: kept as data
                {"resource": outcome},  # no mode: Epic's warning entry
                {"resource": outcome, "search": {"mode": "outcome"}},
                {"resource": {"resourceType": "Patient", "id": "p"}},
                {"resource": {"resourceType": "Patient", "id": "q"}, "search": {"mode": "other"}},
            ],
        }
    )
    assert page.resources == [outcome, {"resourceType": "Patient", "id": "p"}]
    assert len(page.outcomes) == 2


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
        got = [r async for r in client.search("Observation", patient="x")]
    assert got == [*first, *second]


class _Body(httpx.AsyncByteStream):
    """An NDJSON body in fixed-size chunks; ``cut_after`` chunks, then the connection drops."""

    def __init__(self, data: bytes, size: int, cut_after: int | None) -> None:
        self.chunks = [data[i : i + size] for i in range(0, len(data), size)]
        self.cut_after = cut_after

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for n, chunk in enumerate(self.chunks):
            if n == self.cut_after:
                raise httpx.ReadError("connection reset mid-body")
            yield chunk


@pytest.mark.parametrize("cut_after", [None, 2, 5, 9])
async def test_grouped_hand_offs_resume_with_every_line_once(cut_after: int | None) -> None:
    lines = [json.dumps({"resourceType": "Patient", "id": f"p{i:03d}"}).encode() for i in range(40)]
    data = b"\n".join(lines) + b"\n"  # ~38 bytes a line
    file_url = f"{BASE}/files/1"
    requests: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status/1"):
            manifest = {"output": [{"type": "Patient", "url": file_url, "count": len(lines)}]}
            return httpx.Response(200, json=manifest)
        requests.append(1)
        cut = cut_after if len(requests) == 1 else None
        return httpx.Response(200, stream=_Body(data, 100, cut))

    async with _client(handler) as client:
        job = client.bulk_export_job(f"{BASE}/status/1")
        manifest = await job.wait()
        batches = [
            b async for b in file_batches(job, manifest.outputs[0], verify=True, parse=False, min_bytes=300)
        ]
    assert [line for batch in batches for line in batch] == lines
    assert len(requests) == (1 if cut_after is None else 2)
    # Every list but the file's last spans >= 300 bytes of 100-byte chunks (>= 7 lines), resumed or not.
    assert all(len(batch) >= 7 for batch in batches[:-1])
    assert len(batches) == 6
