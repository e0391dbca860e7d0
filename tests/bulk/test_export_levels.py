"""Bulk ``$export`` at each level (Patient, system, Group) against a scripted server: the exact kick-off request
(path, method, headers, parameters), then 202 + Content-Location, polling, the manifest and the files.

Epic itself only has Group-level export; the other two levels are for other servers (against Epic, the client
only sees them refused). A wrong path, a missing header or a dropped parameter fails here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth
from epic_fhir_async._retry import RetryPolicy
from epic_fhir_async.bulk._manifest import BulkProgress, PollCadence

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"
PREFIX = "/api/FHIR/R4"
STATUS = f"{BASE}/bulkstatus/77"
TOKEN = "t0ken-levels"
FAST = PollCadence(initial=0.001, maximum=0.002, max_retry_after=0.002, min_delay=0.0)
LAB = "Observation?category=laboratory,vital-signs"
SINCE = "2024-01-01T00:00:00Z"

PATIENTS: list[dict[str, Any]] = [{"resourceType": "Patient", "id": f"p{i}"} for i in range(2)]
OBSERVATIONS: list[dict[str, Any]] = [
    {"resourceType": "Observation", "id": f"o{i}", "subject": {"reference": "Patient/p0"}} for i in range(3)
]
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "information", "code": "informational", "details": {"text": "note"}}],
}


def ndjson(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


FILES = {
    f"{BASE}/bulkfiles/patient-1": ndjson(PATIENTS),
    f"{BASE}/bulkfiles/obs-1": ndjson(OBSERVATIONS[:2]),
    f"{BASE}/bulkfiles/obs-2": ndjson(OBSERVATIONS[2:]),
    f"{BASE}/bulkfiles/errors-1": ndjson([OUTCOME]),
}


@dataclass
class ScriptedServer:
    """A Bulk Data server that accepts a kick-off only at ``kickoff_path``; anything else is a 404."""

    kickoff_path: str
    requests: list[httpx.Request] = field(default_factory=list)
    polls: int = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == self.kickoff_path:
            return httpx.Response(202, headers={"Content-Location": STATUS})
        if str(request.url) == STATUS and request.method == "GET":
            self.polls += 1
            if self.polls == 1:
                return httpx.Response(202, headers={"X-Progress": "Preparing: 40%", "Retry-After": "0"})
            return httpx.Response(200, json=self.manifest(), headers={"Content-Type": "application/json"})
        if str(request.url) in FILES and request.method == "GET":
            return httpx.Response(200, content=FILES[str(request.url)])
        return httpx.Response(404, text="<html>not here</html>", headers={"Content-Type": "text/html"})

    def manifest(self) -> dict[str, Any]:
        return {
            "transactionTime": "2026-01-01T00:00:00Z",
            "request": f"{BASE}{self.kickoff_path.removeprefix(PREFIX)}",
            "requiresAccessToken": True,
            "output": [
                {"type": "Patient", "url": f"{BASE}/bulkfiles/patient-1", "count": 2},
                {"type": "Observation", "url": f"{BASE}/bulkfiles/obs-1", "count": 2},
                {"type": "Observation", "url": f"{BASE}/bulkfiles/obs-2", "count": 1},
            ],
            "error": [{"type": "OperationOutcome", "url": f"{BASE}/bulkfiles/errors-1"}],
        }


LEVELS = [
    pytest.param({"patient_level": True}, f"{PREFIX}/Patient/$export", id="patient"),
    pytest.param({}, f"{PREFIX}/$export", id="system"),
    pytest.param({"group_id": "e3iab.QwjV"}, f"{PREFIX}/Group/e3iab.QwjV/$export", id="group"),
]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(("level", "kickoff_path"), LEVELS)
async def test_each_level_kicks_off_at_its_path_then_polls_and_downloads(
    level: dict[str, Any], kickoff_path: str, method: str, tmp_path: Path
) -> None:
    server = ScriptedServer(kickoff_path)
    events: list[BulkProgress] = []
    async with EpicFHIRClient(
        BASE,
        auth=StaticTokenAuth(TOKEN),
        transport=httpx.MockTransport(server),
        retry=RetryPolicy(max_attempts=1),
        epic_rules=False,  # a server with these levels and _since is not Epic
    ) as client:
        job = await client.bulk_export(
            **level,
            types=["Patient", "Observation"],
            type_filters=[LAB],
            since=SINCE,
            output_format="application/fhir+ndjson",
            extra_params={"includeAssociatedData": "LatestProvenanceResources"},
            method=method,  # type: ignore[arg-type]
            cadence=FAST,
        )
        assert job.status_url == STATUS
        manifest = await job.wait(progress=events.append)
        result = await job.download(tmp_path)
        streamed = [(r["resourceType"], r["id"]) async for r in job.resources()]

    # -- the kick-off: once, at the level's path, with the Bulk Data headers and every parameter
    kickoffs = [r for r in server.requests if r.url.path.endswith("$export")]
    assert [(r.method, r.url.path) for r in kickoffs] == [(method, kickoff_path)]
    kickoff = kickoffs[0]
    assert kickoff.headers["accept"] == "application/fhir+json"
    assert kickoff.headers["prefer"] == "respond-async"
    assert kickoff.headers["authorization"] == f"Bearer {TOKEN}"
    if method == "GET":
        raw = kickoff.url.raw_path.decode()
        assert "_type=Patient,Observation" in raw  # one comma-joined _type, as Epic wants it
        params = kickoff.url.params
        assert params.get_list("_type") == ["Patient,Observation"]
        assert params.get_list("_typeFilter") == [LAB]
        assert "%2C" in raw.split("_typeFilter=")[1]  # the filter's inner comma is escaped, not a separator
        assert params.get_list("_since") == [SINCE]
        assert params.get_list("_outputFormat") == ["application/fhir+ndjson"]
        assert params.get_list("includeAssociatedData") == ["LatestProvenanceResources"]
        assert kickoff.content == b""
    else:
        assert kickoff.url.query == b""
        assert kickoff.headers["content-type"] == "application/fhir+json"
        body = json.loads(kickoff.content)
        assert body["resourceType"] == "Parameters"
        assert body["parameter"] == [
            {"name": "_type", "valueString": "Patient,Observation"},
            {"name": "_typeFilter", "valueString": LAB},
            {"name": "_since", "valueInstant": SINCE},
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
            {"name": "includeAssociatedData", "valueString": "LatestProvenanceResources"},
        ]

    # -- polling: a 202 (progress reported) then the 200 manifest, each with the token and Accept
    polls = [r for r in server.requests if str(r.url) == STATUS]
    assert len(polls) == 2
    assert {r.method for r in polls} == {"GET"}
    assert {r.headers["accept"] for r in polls} == {"application/fhir+json"}
    assert {r.headers["authorization"] for r in polls} == {f"Bearer {TOKEN}"}
    assert [(e.percent, e.done) for e in events] == [(40.0, False), (100.0, True)]
    assert manifest.transaction_time == "2026-01-01T00:00:00Z"
    assert manifest.expected_counts() == {"Patient": 2, "Observation": 3}

    # -- files: each fetched as NDJSON with the token (requiresAccessToken), written whole to disk
    fetched = [r for r in server.requests if "/bulkfiles/" in r.url.path]
    assert {r.headers["accept"] for r in fetched} == {"application/fhir+ndjson"}
    assert {r.headers["authorization"] for r in fetched} == {f"Bearer {TOKEN}"}
    assert result.counts() == {"Patient": 2, "Observation": 3}
    assert len(result.files) == 3
    assert len(result.outcomes) == 1
    assert result.outcomes[0].issues[0].severity == "information"
    on_disk: list[dict[str, Any]] = []
    for f in result.files:
        assert f.path.parent == tmp_path
        on_disk += [json.loads(line) for line in f.path.read_bytes().splitlines()]
    assert sorted(on_disk, key=lambda r: (r["resourceType"], r["id"])) == sorted(
        PATIENTS + OBSERVATIONS, key=lambda r: (r["resourceType"], r["id"])
    )
    assert sorted(streamed) == sorted((r["resourceType"], r["id"]) for r in PATIENTS + OBSERVATIONS)
    # Nothing was sent anywhere the script does not know (a wrong path would have been a 404 and an error).
    assert all(r.url.path == kickoff_path or str(r.url) in {STATUS, *FILES} for r in server.requests)
