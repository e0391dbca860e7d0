"""Bulk knobs from ``SandboxConfig`` / ``EpicSandbox(...)`` keywords, exercised over raw HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox, SandboxClock, SandboxConfig

pytestmark = pytest.mark.anyio
GROUP = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"


def make(**options: Any) -> EpicSandbox:
    return EpicSandbox(seed=0, patients=4, clock=SandboxClock(frozen_at=1_780_000_000.0), **options)


def headers(sb: EpicSandbox, **extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {sb.issue_token('bulk')}",
        "Accept": "application/fhir+json",
        "Prefer": "respond-async",
        **extra,
    }


async def kickoff(sb: EpicSandbox, http: httpx.AsyncClient, **params: str) -> httpx.Response:
    return await http.get(f"{sb.base_url}/Group/{GROUP}/$export", params=params, headers=headers(sb))


def test_config_reaches_the_bulk_server() -> None:
    sb = EpicSandbox(
        SandboxConfig(
            patients=0,
            export_resources_per_file=7,
            export_retention=60.0,
            export_since="ignore",
            export_type_filter=False,
            export_allow_post=True,
            export_too_recent_status=400,
            export_progress_headers=False,
            export_synthetic_observations=5,
            export_cooldown=30.0,
        )
    )
    bulk = sb.bulk
    assert (bulk.resources_per_file, bulk.retention_seconds, bulk.since, bulk.type_filter) == (
        7,
        60.0,
        "ignore",
        False,
    )
    assert (bulk.allow_post, bulk.too_recent_status, bulk.progress_headers) == (True, 400, False)
    assert (bulk.synthetic_observations, bulk.synthetic_per_file, bulk.cooldown_seconds) == (5, 7, 30.0)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"export_since": "maybe"}, "export_since"),
        ({"export_resources_per_file": 0}, "export_resources_per_file"),
    ],
)
def test_bad_bulk_config_is_rejected(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        SandboxConfig(**options)


async def test_files_split_at_the_configured_size_and_counts_match() -> None:
    sb = make(export_seconds=0.0, export_resources_per_file=25)
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        status_url = (await kickoff(sb, http, _type="Observation")).headers["content-location"]
        manifest = (await http.get(status_url, headers=headers(sb))).json()
        assert len(manifest["output"]) > 1
        for item in manifest["output"]:
            assert item["count"] <= 25
            ndjson = await http.get(item["url"], headers=headers(sb))
            assert len(ndjson.content.splitlines()) == item["count"]


async def test_since_is_rejected_or_ignored() -> None:
    for mode, status in (("reject", 400), ("ignore", 202)):
        sb = make(export_since=mode)
        async with httpx.AsyncClient(transport=sb.transport()) as http:
            response = await kickoff(sb, http, _type="Patient", _since="2025-01-01T00:00:00Z")
        assert response.status_code == status
        if status == 400:
            assert "_since" in response.json()["issue"][0]["diagnostics"]


async def test_type_filter_flag() -> None:
    for enabled, status in ((True, 202), (False, 400)):
        sb = make(export_type_filter=enabled)
        async with httpx.AsyncClient(transport=sb.transport()) as http:
            response = await kickoff(
                sb, http, _type="Observation", _typeFilter="Observation?category=laboratory"
            )
        assert response.status_code == status


async def test_accept_header_is_required() -> None:
    sb = make()
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        for accept in ("application/json", "*/*"):
            response = await http.get(
                f"{sb.base_url}/Group/{GROUP}/$export", headers=headers(sb, Accept=accept)
            )
            assert response.status_code == 400
            assert "Accept" in response.json()["issue"][0]["diagnostics"]


async def test_expired_job_is_404_after_configured_retention() -> None:
    sb = make(export_seconds=10.0, export_retention=100.0)
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        status_url = (await kickoff(sb, http, _type="Patient")).headers["content-location"]
        assert (await http.get(status_url, headers=headers(sb))).status_code == 202
        sb.clock.advance(10.0)
        assert (await http.get(status_url, headers=headers(sb))).status_code == 200
        sb.clock.advance(100.0)
        expired = await http.get(status_url, headers=headers(sb))
    assert expired.status_code == 404
    assert expired.json()["resourceType"] == "OperationOutcome"


async def test_post_kickoff_and_too_recent_status_from_config() -> None:
    sb = make(export_allow_post=True, export_too_recent_status=400)
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Patient"}]}
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        first = await http.post(f"{sb.base_url}/Group/{GROUP}/$export", json=body, headers=headers(sb))
        assert first.status_code == 202
        second = await kickoff(sb, http, _type="Patient")
    assert second.status_code == 400
    assert "too recently" in second.json()["issue"][0]["diagnostics"]
