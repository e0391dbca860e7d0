"""End to end through the sandbox app with raw httpx (no SDK): the whole Bulk $export flow as a client sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox
from epic_fhir_async.sandbox._bulk import TOO_RECENT_TEXT
from epic_fhir_async.sandbox._data import build_dataset

pytestmark = pytest.mark.anyio
PATIENTS = 12

GROUP = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"
KICKOFF_HEADERS = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


@pytest.fixture
def sandbox() -> EpicSandbox:
    sb = EpicSandbox(seed=0, patients=PATIENTS)
    bulk = sb.bulk  # its attributes are public and mutable, so tests set windows on it
    bulk.export_seconds = 30.0
    bulk.resources_per_file = 40
    return sb


@pytest.fixture
async def bulk_http(sandbox: EpicSandbox) -> AsyncIterator[httpx.AsyncClient]:
    """A raw httpx client on this module's sandbox, without credentials (each request brings its own)."""
    async with httpx.AsyncClient(transport=sandbox.transport()) as client:
        yield client


def auth(sb: EpicSandbox, client_id: str = "bulk-client") -> dict[str, str]:
    return {"Authorization": f"Bearer {sb.issue_token(client_id=client_id)}"}


async def start(
    sb: EpicSandbox,
    bulk_http: httpx.AsyncClient,
    params: dict[str, str] | None = None,
    client_id: str = "bulk-client",
) -> httpx.Response:
    return await bulk_http.get(
        f"{sb.base_url}/Group/{GROUP}/$export",
        params=params,
        headers={**KICKOFF_HEADERS, **auth(sb, client_id)},
    )


async def manifest_of(sb: EpicSandbox, bulk_http: httpx.AsyncClient, status_url: str) -> dict[str, Any]:
    sb.clock.advance(sb.bulk.export_seconds)
    response = await bulk_http.get(status_url, headers=auth(sb))
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


def group_patients() -> set[str]:
    group = build_dataset(seed=0, patients=PATIENTS).resources["Group"][GROUP]
    return {m["entity"]["reference"].removeprefix("Patient/") for m in group["member"]}


def owner(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    holder = resource.get("subject") or resource.get("patient") or {}
    return str(holder.get("reference", "")).removeprefix("Patient/")


async def test_full_flow(sandbox: EpicSandbox, bulk_http: httpx.AsyncClient) -> None:
    kick = await start(sandbox, bulk_http, {"_type": "Patient,Observation,Condition"})
    assert kick.status_code == 202
    assert kick.content == b""
    status_url = kick.headers["Content-Location"]
    assert status_url.startswith(f"{sandbox.base_url}/BulkRequest/")
    for _ in range(2):
        poll = await bulk_http.get(status_url, headers=auth(sandbox))
        assert poll.status_code == 202
        assert poll.content == b""
        assert poll.headers["X-Progress"].startswith("Processing: ")
        assert 1 <= int(poll.headers["Retry-After"]) <= 30
        sandbox.clock.advance(10.0)
    manifest = await manifest_of(sandbox, bulk_http, status_url)
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].startswith(f"{sandbox.base_url}/Group/{GROUP}/$export?_type=")
    members = group_patients()
    counts: dict[str, int] = {}
    for entry in manifest["output"]:
        unauthenticated = await bulk_http.get(entry["url"])
        assert unauthenticated.status_code == 401
        response = await bulk_http.get(entry["url"], headers=auth(sandbox))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/fhir+ndjson")
        lines = response.content.splitlines()
        assert len(lines) == entry["count"] <= 40
        for line in lines:
            resource = httpx.Response(200, content=line).json()
            assert resource["resourceType"] == entry["type"]
            assert owner(resource) in members
        counts[entry["type"]] = counts.get(entry["type"], 0) + entry["count"]
    assert set(counts) == {"Patient", "Observation", "Condition"}
    assert counts["Patient"] == len(members)
    assert sum(1 for e in manifest["output"] if e["type"] == "Observation") > 1  # several files per type
    for entry in manifest["error"]:
        errors = await bulk_http.get(entry["url"], headers=auth(sandbox))
        assert errors.status_code == 200
        assert all(b'"resourceType":"OperationOutcome"' in line for line in errors.content.splitlines())
    assert sandbox.stats["bulk_files_served"] == len(manifest["output"]) + len(manifest["error"])


async def test_kickoff_errors(sandbox: EpicSandbox, bulk_http: httpx.AsyncClient) -> None:
    no_prefer = await bulk_http.get(
        f"{sandbox.base_url}/Group/{GROUP}/$export",
        headers={"Accept": "application/fhir+json", **auth(sandbox)},
    )
    assert no_prefer.status_code == 400
    assert "Prefer" in no_prefer.json()["issue"][0]["diagnostics"]
    unknown = await bulk_http.get(
        f"{sandbox.base_url}/Group/eNoSuchGroup/$export", headers={**KICKOFF_HEADERS, **auth(sandbox)}
    )
    assert unknown.status_code == 404
    assert unknown.json()["issue"][0]["details"]["coding"][0]["code"] == "59008"
    since = await start(sandbox, bulk_http, {"_since": "2024-01-01T00:00:00Z"})
    assert since.status_code == 400
    assert "_since" in since.json()["issue"][0]["diagnostics"]
    system = await bulk_http.get(f"{sandbox.base_url}/$export", headers={**KICKOFF_HEADERS, **auth(sandbox)})
    assert system.status_code == 404
    assert system.headers["content-type"].startswith("text/html")
    no_token = await bulk_http.get(f"{sandbox.base_url}/Group/{GROUP}/$export", headers=KICKOFF_HEADERS)
    assert no_token.status_code == 401


async def test_too_soon_then_delete_then_files_gone(
    sandbox: EpicSandbox, bulk_http: httpx.AsyncClient
) -> None:
    sandbox.bulk.cooldown_seconds = 120.0
    first = await start(sandbox, bulk_http, {"_type": "Patient"})
    status_url = first.headers["Content-Location"]
    again = await start(sandbox, bulk_http, {"_type": "Patient"})
    assert again.status_code == 429
    assert TOO_RECENT_TEXT in again.json()["issue"][0]["diagnostics"]
    manifest = await manifest_of(sandbox, bulk_http, status_url)
    other = await bulk_http.get(manifest["output"][0]["url"], headers=auth(sandbox, "someone-else"))
    assert other.status_code == 403
    deleted = await bulk_http.delete(status_url, headers=auth(sandbox))
    assert deleted.status_code == 202
    gone = await bulk_http.get(manifest["output"][0]["url"], headers=auth(sandbox))
    assert gone.status_code == 404
    cooling = await start(sandbox, bulk_http, {"_type": "Patient"})
    assert cooling.status_code == 429
    assert int(cooling.headers["Retry-After"]) == 90  # 120 s window, 30 s of export already elapsed
    sandbox.clock.advance(90.0)
    assert (await start(sandbox, bulk_http, {"_type": "Patient"})).status_code == 202


async def test_retention_expiry(sandbox: EpicSandbox, bulk_http: httpx.AsyncClient) -> None:
    sandbox.bulk.retention_seconds = 3600.0
    status_url = (await start(sandbox, bulk_http, {"_type": "Condition"})).headers["Content-Location"]
    manifest = await manifest_of(sandbox, bulk_http, status_url)
    sandbox.clock.advance(3600.0)
    assert (await bulk_http.get(status_url, headers=auth(sandbox))).status_code == 404
    assert (await bulk_http.get(manifest["output"][0]["url"], headers=auth(sandbox))).status_code == 410


async def test_big_synthetic_file_streams(sandbox: EpicSandbox, bulk_http: httpx.AsyncClient) -> None:
    bulk = sandbox.bulk
    bulk.synthetic_observations = 12_000
    bulk.synthetic_per_file = 12_000
    status_url = (await start(sandbox, bulk_http, {"_type": "Observation"})).headers["Content-Location"]
    manifest = await manifest_of(sandbox, bulk_http, status_url)
    big = manifest["output"][-1]
    assert big["count"] == 12_000
    lines = 0
    async with bulk_http.stream("GET", big["url"], headers=auth(sandbox)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line:
                lines += 1
    assert lines == 12_000
