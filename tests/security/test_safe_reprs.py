"""Reprs of pages and searches show counts and names, never resources, ids or parameter values."""

from __future__ import annotations

from contextlib import aclosing

import pytest

from epic_fhir_async import EpicFHIRClient
from epic_fhir_async._bundle import parse_page
from tests.conftest import CAMILA, Recorder

pytestmark = pytest.mark.anyio

DERRICK = "eq081-VQEgP8drUUqCWzHfw3"


def _bundle() -> dict[str, object]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 2,
        "link": [{"relation": "next", "url": "https://h/api/FHIR/R4/Observation?sessionID=16-SECRETSESSION"}],
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "obs-SECRET-1",
                    "valueString": "HIV positive",
                }
            },
            {"resource": {"resourceType": "Patient", "id": CAMILA}, "search": {"mode": "include"}},
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "warning", "code": "x", "diagnostics": "about LOPEZ"}],
                },
                "search": {"mode": "outcome"},
            },
        ],
    }


def test_page_repr_is_counts_only() -> None:
    page = parse_page(_bundle())
    text = repr(page)
    assert text == "Page(resources=1, included=1, outcomes=1, total=2, has_next=True)"
    for secret in ("obs-SECRET-1", "HIV", CAMILA, "SECRETSESSION", "LOPEZ"):
        assert secret not in text
        assert secret not in str(page)
    assert page.resources[0]["id"] == "obs-SECRET-1"  # the data itself is untouched


def test_search_query_repr_names_parameters_not_values(recorder: Recorder) -> None:
    query = recorder.client().search("Observation", patient=CAMILA, category="laboratory")
    text = repr(query.where(code="1234-5").using_post())
    assert "patient" in text
    assert "Observation" in text
    assert CAMILA not in text
    assert "laboratory" not in text
    assert "1234-5" not in text


async def test_sandbox_search_objects_hold_no_content_in_repr(sandbox_client: EpicFHIRClient) -> None:
    async with sandbox_client as client:
        query = client.search("Observation", patient=DERRICK, category="vital-signs")
        seen: list[str] = []
        async with aclosing(query.pages()) as pages:
            async for page in pages:
                seen += [r["id"] for r in page.resources]
                texts = [repr(page), repr(pages), repr(query)]
                break
        resources = aiter(query.with_prefetch())
        first = await anext(resources)
        texts.append(repr(resources))
        await resources.aclose()  # type: ignore[attr-defined]
    assert seen
    assert first["id"]
    for text in texts:
        assert DERRICK not in text
        assert not any(resource_id in text for resource_id in seen)
        assert "vital-signs" not in text
