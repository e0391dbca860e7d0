"""The soak in short (``nox -s soak`` runs the long one on real sockets), and the fixes it led to.

The short soak runs in-process for about a second per backend with every fault on except the 429 rate limit
(its ``Retry-After`` is at least one real second; ``tests/pull/test_pull_faults.py`` covers it on a frozen
clock). Waits are shortened (backoff, token retry, kick-off retry); every fault is still injected.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest

from benchmarks.soak import SoakOptions, default_faults, run_soak
from epic_fhir_async import (
    EpicFHIRClient,
    EpicFHIRError,
    PagingError,
    ServerError,
    StaticTokenAuth,
    TransportError,
)
from epic_fhir_async import _bulk_kickoff as kickoff
from epic_fhir_async._bulk_manifest import PollCadence
from epic_fhir_async._retry import RetryPolicy
from epic_fhir_async.auth import _request
from epic_fhir_async.sandbox import EpicSandbox

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"


@pytest.fixture
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_request, "TOKEN_RETRY_DELAY", 0.01)
    monkeypatch.setattr(kickoff, "_KICKOFF_BACKOFF", 0.01)


async def test_short_soak_loses_nothing_duplicates_nothing_leaks_nothing(short_waits: None) -> None:
    opts = SoakOptions(
        seconds=0.6,
        patients=3,
        served=False,
        token_lifetime=1.0,  # a refresh or two during the run, with token flakes
        # Sweeps further apart than a loaded machine takes to re-page a restarted search: at 0.4 s a restart
        # that had not yet caught up was expired again (SessionExpired, by design) about once in ten runs.
        expire_every=1.0,
        export_seconds=0.1,
        retry=RetryPolicy(max_attempts=10, backoff_base=0.005, backoff_max=0.05),
        cadence=PollCadence(initial=0.02, maximum=0.05, max_retry_after=0.05, min_delay=0.01),
        # Every fault of the long soak, shorter spikes, and no rate limit (its Retry-After is >= 1 real s).
        faults=dataclasses.replace(
            default_faults(), rate_limit_rps=0.0, latency_spike=0.02, latency_spike_rate=0.05
        ),
    )
    report = await run_soak(opts)
    assert report.errors == []
    assert (report.lost, report.duplicated, report.unexpected) == (0, 0, 0)
    assert (report.leaked_sockets, report.leaked_tasks) == (0, 0)
    assert report.received == report.expected > 0
    assert report.rounds["pull"] >= 1
    assert report.rounds["bulk"] >= 1
    faults = report.faults
    assert faults["server errors (5xx)"] > 0  # ~5 % of hundreds of requests: never zero in practice
    assert faults["connections cut mid-body"] > 0
    assert report.retries >= faults["server errors (5xx)"]
    assert "PASS" in report.table()


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


async def _read_until_it_fails(client: EpicFHIRClient, patient_id: str) -> None:
    for _ in range(40):  # half the answers are cut: one of 40 reads fails but for a 1e-12 chance
        await client.read("Patient", patient_id)


async def test_a_long_search_survives_several_expiries_when_each_restart_makes_progress() -> None:
    # Regression (found by the soak): one restart per search, ever, lost a long stream on its second 4113
    # even though the restart had delivered new pages in between.
    pages = Pages(expire=[1, 2, 3])
    async with EpicFHIRClient(
        BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(pages.handler)
    ) as c:
        ids = [r["id"] async for r in c.search("Observation", patient="p")]
    assert ids == [f"o{i}" for i in range(12)]
    assert pages.first_pages == 4  # the first request and three restarts


async def test_an_expiry_before_the_restart_delivered_anything_new_still_raises() -> None:
    pages = Pages(expire=[2, 1])  # the restart dies on page 1, which it had already delivered
    async with EpicFHIRClient(
        BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(pages.handler)
    ) as c:
        got: list[str] = []
        with pytest.raises(PagingError, match="expired twice"):
            await _collect(c.search("Observation", patient="p"), got)
    assert got == [f"o{i}" for i in range(6)]


async def test_served_connections_cut_mid_body_are_retried_and_never_escape_as_httpx_errors() -> None:
    # Regression (found by the soak): over a socket the headers arrive before the cut, so the retrying
    # transport returned the response and the cut surfaced later as a bare httpx.RemoteProtocolError.
    sb = EpicSandbox(seed=1, patients=2, page_size=5)
    token = sb.issue_token("drops")
    sb.faults.drop_rate = 0.5
    async with sb.serve(port=0) as base_url:
        retry = RetryPolicy(max_attempts=30, backoff_base=0.001, backoff_max=0.002)
        async with EpicFHIRClient(base_url, auth=StaticTokenAuth(token), retry=retry) as client:
            patient = await client.read("Patient", sb.dataset.patient_ids[0])
            found = [r async for r in client.search("Condition", patient=patient["id"])]
        async with EpicFHIRClient(
            base_url, auth=StaticTokenAuth(token), retry=RetryPolicy(max_attempts=1)
        ) as c:
            with pytest.raises(TransportError):  # never an httpx exception
                await _read_until_it_fails(c, patient["id"])
    assert found
    assert sb.stats["faults:drop"] > 1


async def test_bulk_kickoff_retries_server_errors_and_rate_limits_but_not_too_recent(
    short_waits: None,
) -> None:
    answers = [
        httpx.Response(503),
        httpx.Response(429, headers={"retry-after": "0"}),
        httpx.Response(202, headers={"content-location": f"{BASE}/BulkRequest/1"}),
    ]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return answers.pop(0)

    async with EpicFHIRClient(
        BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(handler)
    ) as client:
        job = await client.bulk_export("g", types=["Patient"])
        assert job.status_url == f"{BASE}/BulkRequest/1"
        assert seen == ["GET", "GET", "GET"]
        answers.extend([httpx.Response(500)] * 4)
        with pytest.raises(EpicFHIRError, match="refused") as info:
            await client.bulk_export("g", types=["Patient"])
        assert isinstance(info.value.__cause__, ServerError)
        assert len(seen) == 3 + 4  # gave up after four attempts
