"""Typed usage of the endpoint directory and the typed models, checked by ``mypy --strict`` (never run)."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.resource import Resource
from typing_extensions import assert_type

from epic_fhir_async import EpicFHIRClient
from epic_fhir_async.directory import DirectoryEntry, EndpointDirectory
from epic_fhir_async.models import ModelStream, raw, to_model


async def directory() -> None:
    found = await EndpointDirectory.fetch(cache_dir="~/.cache/epic-fhir")
    assert_type(found.search("mercy"), list[DirectoryEntry])
    entry = found.get("Mercy Health")
    assert_type(entry.base_url, str)
    assert_type(entry.client(), EpicFHIRClient)
    assert_type(found.client(entry), EpicFHIRClient)
    assert_type(await EndpointDirectory.from_file("Brands.json"), EndpointDirectory)


async def models(client: EpicFHIRClient) -> None:
    assert_type(await client.read("Patient", "x"), dict[str, Any])
    assert_type(await client.read("Patient", "x", model=True), Resource)
    query = client.search("Observation", patient="x", category="laboratory")
    assert_type(query.models(), ModelStream)
    async for model in query.models():
        assert_type(model, Resource)
        assert_type(raw(model), dict[str, Any])
    assert_type(to_model({"resourceType": "Patient"}), Resource)
