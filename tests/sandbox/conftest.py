"""Fixtures for the sandbox app tests: a sandbox on a frozen clock and a raw httpx client (never the SDK)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox, SandboxClock

CAMILA = "erXuFYUfucBZaryVksYEcMg3"
DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
JASON = "eD.LxhDyX35TntF77l7etUA3"  # no Observations in the dataset: 4101 searches
EPIC_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"
JSON_ACCEPT = {"Accept": "application/fhir+json"}


@pytest.fixture
def sb() -> EpicSandbox:
    return EpicSandbox(seed=0, patients=20, clock=SandboxClock(frozen_at=1_780_000_000.0))


@pytest.fixture
async def http(sb: EpicSandbox) -> AsyncIterator[httpx.AsyncClient]:
    """A raw httpx client on the in-process transport, with a valid token for an all-types client."""
    headers = {"Authorization": f"Bearer {sb.issue_token('all-types')}", **JSON_ACCEPT}
    async with httpx.AsyncClient(transport=sb.transport(), base_url=sb.base_url, headers=headers) as client:
        yield client


def issue_codes(body: dict[str, object]) -> list[str]:
    """The Epic codes of an OperationOutcome's issues, in order."""
    issues = body["issue"]
    assert isinstance(issues, list)
    return [issue["details"]["coding"][0]["code"] for issue in issues]
