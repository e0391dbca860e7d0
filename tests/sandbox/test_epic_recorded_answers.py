"""The emulator held against Epic's recorded answers (docs/epic-notes.md "Emulator status"): OperationOutcome
texts and expressions, two issues where Epic gives two, declared parameters that filter or are refused (never
dropped), the chained ``patient.identifier``, Epic's paged link order and where the outcome entry goes, and
Patient resources in Epic's shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import CAMILA, DERRICK, issue_codes

pytestmark = pytest.mark.anyio


def _matches(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]


def _outcome_issues(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        i for e in body.get("entry", []) if e["search"]["mode"] == "outcome" for i in e["resource"]["issue"]
    ]


async def test_unknown_param_and_demographics_issues_carry_epics_texts_and_expression(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("Patient", params={"totally-bogus-param": "foo"})
    assert response.status_code == 400
    unknown, fatal = response.json()["issue"]
    assert unknown["details"]["text"] == "Content invalid against the specification or a profile."
    assert unknown["details"]["coding"][0]["display"] == unknown["details"]["text"]
    assert unknown["diagnostics"] == "Unknown parameter: TOTALLY-BOGUS-PARAM. Parameter has been ignored."
    assert "expression" not in unknown
    assert "location" not in unknown
    assert fatal["details"]["text"] == (
        "The content/operation failed to pass a business rule, and so could not proceed."
    )
    assert fatal["location"] == ["/f:demographics/_id"]
    assert fatal["expression"] == ["demographics/_id"]


async def test_birthdate_range_alone_gets_both_of_epics_issues(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "Patient", params=[("birthdate", "ge1990-01-01"), ("birthdate", "le1995-12-31")]
    )
    assert response.status_code == 400
    assert [i["diagnostics"] for i in response.json()["issue"]] == [
        "A single valid date is required for birthdate",
        "This resource requires demographics or _id parameter for searching.",
    ]


async def test_birthdate_range_with_a_name_gets_only_the_birthdate_issue(http: httpx.AsyncClient) -> None:
    params = {"family": "Lopez", "birthdate": ["ge1990-01-01", "le1995-12-31"]}
    response = await http.get("Patient", params=params)
    assert response.status_code == 400
    assert issue_codes(response.json()) == ["59111"]


async def test_an_hl7_encounter_class_is_an_information_value_issue_first(http: httpx.AsyncClient) -> None:
    # Epic's Encounter?class=AMB: 400 whose first issue is information/value (Epic's classes are its own codes),
    # then the fatal "patient required".
    response = await http.get("Encounter", params={"class": "AMB"})
    assert response.status_code == 400
    first, last = response.json()["issue"]
    assert (first["severity"], first["code"]) == ("information", "value")
    assert "CLASS" in first["diagnostics"]
    assert (last["severity"], last["code"]) == ("fatal", "business-rule")


async def test_encounter_class_filters_by_epics_class_codes(http: httpx.AsyncClient) -> None:
    everything = _matches((await http.get("Encounter", params={"patient": CAMILA})).json())
    classes = {e["class"]["code"] for e in everything}
    assert len(classes) > 1
    assert all(
        e["class"]["system"] == "urn:oid:1.2.840.114350.1.72.1.7.7.10.696784.13260" for e in everything
    )
    wanted = sorted(classes)[0]
    body = (await http.get("Encounter", params={"patient": CAMILA, "class": wanted})).json()
    assert {e["class"]["code"] for e in _matches(body)} == {wanted}
    assert len(_matches(body)) == sum(e["class"]["code"] == wanted for e in everything)


@pytest.mark.parametrize(
    ("rtype", "params", "check"),
    [
        ("MedicationRequest", {"intent": "plan"}, lambda r: r["intent"] == "plan"),
        ("MedicationRequest", {"intent": "order"}, lambda r: r["intent"] == "order"),
        ("Condition", {"onset-date": "ge2025-01-01"}, lambda r: r["onsetDateTime"] >= "2025-01-01"),
        ("Condition", {"onset-date": "lt2025-01-01"}, lambda r: r["onsetDateTime"] < "2025-01-01"),
        ("Encounter", {"status": "planned"}, lambda r: r["status"] == "planned"),
    ],
)
async def test_declared_params_filter(
    http: httpx.AsyncClient, rtype: str, params: dict[str, str], check: Any
) -> None:
    unfiltered = _matches((await http.get(rtype, params={"patient": CAMILA})).json())
    body = (await http.get(rtype, params={"patient": CAMILA, **params})).json()
    kept = _matches(body)
    assert all(check(r) for r in kept)
    assert len(kept) == sum(1 for r in unfiltered if check(r))  # exactly the matching ones, none dropped
    assert body["total"] == len(kept)


async def test_a_declared_param_the_sandbox_cannot_evaluate_is_refused_not_dropped(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("Encounter", params={"patient": CAMILA, "location": "Location/abc"})
    assert response.status_code == 400
    (issue,) = response.json()["issue"]
    assert issue["code"] == "not-supported"
    assert "location" in issue["diagnostics"]


async def test_chained_patient_identifier_works_and_the_modifier_form_does_not(
    http: httpx.AsyncClient,
) -> None:
    by_id = _matches((await http.get("Condition", params={"patient": DERRICK})).json())
    chained = (await http.get("Condition", params={"patient.identifier": "E4005"})).json()
    assert [c["id"] for c in _matches(chained)] == [c["id"] for c in by_id]
    assert by_id
    typed = (await http.get("Condition", params={"patient.identifier": "EPI|203711"})).json()
    assert [c["id"] for c in _matches(typed)] == [c["id"] for c in by_id]
    nobody = (await http.get("Condition", params={"patient.identifier": "no-such-mrn"})).json()
    assert nobody["total"] == 0
    assert (await http.get("Condition", params={"patient:identifier": "E4005"})).status_code == 400


async def test_paged_bundles_list_next_before_self_and_end_with_the_outcome(http: httpx.AsyncClient) -> None:
    params = {"patient": DERRICK, "category": "vital-signs", "_count": "500"}
    page = (await http.get("Observation", params=params)).json()
    assert [link["relation"] for link in page["link"]] == ["next", "self"]
    assert _outcome_issues(page) == []  # Epic's first page of a paged search carries no outcome entry
    pages = [page]
    while nxt := [link["url"] for link in page["link"] if link["relation"] == "next"]:
        page = (await http.get(nxt[0])).json()
        pages.append(page)
    assert len(pages) >= 3
    assert all(_outcome_issues(p) == [] for p in pages[:-1])
    assert [i["details"]["coding"][0]["code"] for i in _outcome_issues(pages[-1])] == ["59204"]
    assert [link["relation"] for link in pages[-1]["link"]] == ["self"]


async def test_patients_have_epics_identifier_set_and_shape(http: httpx.AsyncClient, sb: EpicSandbox) -> None:
    for pid in (DERRICK, sb.dataset.patient_ids[-1]):
        patient = (await http.get(f"Patient/{pid}")).json()
        kinds = [i["type"]["text"] for i in patient["identifier"]]
        assert kinds[:6] == ["CEID", "EPIC", "EXTERNAL", "FHIR", "FHIR STU3", "INTERNAL"]
        assert kinds[-1] == "WPRINTERNAL"
        by_kind = {i["type"]["text"]: i for i in patient["identifier"]}
        assert by_kind["FHIR STU3"]["value"] == pid
        assert by_kind["INTERNAL"]["value"].strip() == by_kind["EXTERNAL"]["value"]
        assert by_kind["EXTERNAL"]["type"]["coding"][0]["code"] == "um"
        assert patient["deceasedBoolean"] is False
        urls = [e["url"].rsplit("/", 1)[-1] for e in patient["extension"]]
        assert urls == [
            "legal-sex",
            "sex-for-clinical-use",
            "us-core-race",
            "us-core-ethnicity",
            "us-core-sex",
            "calculated-pronouns-to-use-for-text",
        ]
        assert "\r\n" in patient["address"][0]["text"]
    derrick = (await http.get(f"Patient/{DERRICK}")).json()
    fhir_dstu2 = next(i for i in derrick["identifier"] if i["type"]["text"] == "FHIR")
    assert fhir_dstu2["system"] == "http://open.epic.com/FHIR/StructureDefinition/patient-dstu2-fhir-id"
