"""Typed models on request (the ``models`` extra, fhir.resources R4B): converted one resource at a time, the raw
dict reachable, Epic-shaped data accepted, and what the models reject said without quoting patient data."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from epic_fhir_async import ConfigurationError, EpicFHIRClient, StaticTokenAuth
from epic_fhir_async import models as typed
from epic_fhir_async.models import ModelValidationError, model_class, models, raw, to_model
from epic_fhir_async.sandbox import EpicSandbox

CAMILA = "erXuFYUfucBZaryVksYEcMg3"


def _client(sb: EpicSandbox) -> EpicFHIRClient:
    return EpicFHIRClient(
        sb.base_url, auth=StaticTokenAuth(sb.issue_token("models")), transport=sb.transport()
    )


@pytest.mark.anyio
async def test_read_with_model_returns_a_typed_patient_and_keeps_the_dict() -> None:
    sb = EpicSandbox(seed=0, patients=2)
    async with _client(sb) as client:
        plain = await client.read("Patient", CAMILA)
        patient = await client.read("Patient", CAMILA, model=True)
    assert isinstance(plain, dict)
    assert isinstance(patient, Patient)
    assert patient.name is not None
    assert patient.name[0].family == "Lopez"
    assert raw(patient) == plain
    assert patient.model_dump()["id"] == CAMILA  # the raw dict is not a field: never serialised
    assert "_epic_fhir_raw" not in patient.model_dump_json()


@pytest.mark.anyio
async def test_search_models_converts_each_resource_as_the_iteration_reaches_it() -> None:
    sb = EpicSandbox(seed=0, patients=2)
    async with _client(sb) as client:
        query = client.search("Observation", patient=CAMILA, category="vital-signs", _count=5)
        dicts = [r async for r in query]
        typed_ones = [o async for o in query.models()]
    assert len(typed_ones) == len(dicts) > 5  # across pages
    assert all(isinstance(o, Observation) for o in typed_ones)
    assert [raw(o) for o in typed_ones] == dicts


@pytest.mark.anyio
async def test_a_bad_resource_fails_only_when_reached() -> None:
    good = {"resourceType": "Patient", "id": "a"}
    bad = {"resourceType": "Patient", "id": "b", "gender": "male", "name": [{"text": ""}]}

    async def source() -> AsyncIterator[dict[str, Any]]:
        yield good
        yield bad

    stream = models(source())
    first = await anext(stream)
    assert raw(first) is good  # the same dict, not a copy
    with pytest.raises(ModelValidationError) as caught:
        await anext(stream)
    assert caught.value.resource is bad
    assert caught.value.problems == (("name.0.text", "string_pattern_mismatch"),)
    await stream.aclose()


def test_every_epic_shaped_resource_of_the_sandbox_validates() -> None:
    dataset = EpicSandbox(seed=0, patients=20).dataset
    rejected = []
    count = 0
    for resources in dataset.resources.values():
        for resource in resources.values():
            count += 1
            try:
                to_model(resource)
            except ModelValidationError as exc:
                rejected.append((exc.resource_type, exc.problems))
    assert count > 1000
    assert rejected == []


# What the models reject (documented in docs/models.md), and one Epic habit they accept.
REJECTED = [
    ("an empty string", {"resourceType": "Patient", "name": [{"text": ""}]}, ("name.0.text", "string_pattern_mismatch")),
    ("a time without a time zone", {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": "2024-01-02T10:00:00"}, ("effectiveDateTime", "value_error")),
    ("an element R4B does not define", {"resourceType": "Patient", "epicExtra": 1}, ("epicExtra", "extra_forbidden")),
    ("an id outside [A-Za-z0-9-.]", {"resourceType": "Patient", "id": "a_b"}, ("id", "string_pattern_mismatch")),
]  # fmt: skip


@pytest.mark.parametrize(("what", "resource", "problem"), REJECTED, ids=[r[0] for r in REJECTED])
def test_what_the_models_reject_is_named_without_its_value(
    what: str, resource: dict[str, Any], problem: tuple[str, str]
) -> None:
    secret = "SECRET-PATIENT-VALUE"
    resource = (
        {**resource, "birthDate": "1990-01-01", "gender": "female"}
        if resource["resourceType"] == "Patient"
        else resource
    )
    resource.setdefault(
        "text", {"status": "generated", "div": f"<div xmlns='http://www.w3.org/1999/xhtml'>{secret}</div>"}
    )
    with pytest.raises(ModelValidationError) as caught:
        to_model(resource)
    assert problem in caught.value.problems
    assert isinstance(caught.value, ValueError)
    shown = f"{caught.value} {caught.value!r} {caught.value.__cause__!r} {caught.value.__context__!r}"
    assert secret not in shown
    assert problem[0] in str(caught.value)


def test_ids_longer_than_64_characters_are_accepted() -> None:
    # Epic's bulk output has ids past R4's 64 characters (docs/epic-notes.md §3.12); the models take them.
    assert to_model({"resourceType": "Patient", "id": "e" + "A1.b-" * 20}).id is not None


def test_bad_arguments_say_what_to_fix() -> None:
    with pytest.raises(ConfigurationError, match="resourceType"):
        to_model({"id": "x"})
    with pytest.raises(ConfigurationError, match="no FHIR R4B model for 'MedicinalProduct'"):
        model_class("MedicinalProduct")  # an R4 type that R4B replaced
    with pytest.raises(ConfigurationError, match=r"made by epic_fhir_async\.models"):
        raw(Patient(id="x"))


def test_without_the_extra_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fhir.resources.R4B", None)  # what a bare install's import finds
    monkeypatch.setattr(typed, "_classes", {})
    with pytest.raises(ConfigurationError, match=r"pip install 'epic-fhir-async\[models\]'"):
        to_model({"resourceType": "Patient", "id": "x"})


def test_importing_the_models_module_loads_no_model_library() -> None:
    code = "import sys, epic_fhir_async.models; print(','.join(m for m in ('fhir', 'pydantic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
