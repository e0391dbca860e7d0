"""Typed usage of the public API, checked by ``mypy --strict`` (never run: pytest does not collect it).

If a public signature loses its types (an ``Any`` return, a wrong element type), ``assert_type`` fails the
typing session before a user's type checker would.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

from epic_fhir_async import (
    BackendServicesAuth,
    EpicFHIRClient,
    NotFound,
    OperationOutcome,
    Page,
    SearchQuery,
    StaticTokenAuth,
)
from epic_fhir_async.auth import generate_private_key
from epic_fhir_async.pull import PullItem
from epic_fhir_async.sandbox import EpicSandbox


async def core(client: EpicFHIRClient) -> None:
    assert_type(await client.read("Patient", "x"), dict[str, Any])
    query = client.search("Observation", patient="x", category="vital-signs")
    assert_type(query, SearchQuery)
    assert_type(query.where(category="laboratory"), SearchQuery)
    async for resource in query:
        assert_type(resource, dict[str, Any])
    async for page in query.pages():
        assert_type(page, Page)
        assert_type(page.resources, list[dict[str, Any]])
        for outcome in page.outcomes:
            assert_type(outcome, OperationOutcome)
    assert_type(await query.first(), dict[str, Any] | None)
    assert_type(await query.count(), int)
    try:
        await client.read("Patient", "nope")
    except NotFound as exc:
        assert_type(exc.status_code, int)


async def pull(client: EpicFHIRClient) -> None:
    async with client.pull(["a", "b"], ["Condition"]) as stream:
        async for item in stream:
            assert_type(item, PullItem)
            assert_type(item.patient_id, str)
            assert_type(item.resource, dict[str, Any])


async def wiring() -> None:
    sandbox = EpicSandbox(seed=0, patients=2)
    key = generate_private_key("RS384")
    auth = BackendServicesAuth("client", key, token_url=sandbox.token_url)
    async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=sandbox.transport()) as client:
        assert_type(client, EpicFHIRClient)
    async with EpicFHIRClient(sandbox.base_url, auth=StaticTokenAuth("t")) as other:
        await core(other)
        await pull(other)
