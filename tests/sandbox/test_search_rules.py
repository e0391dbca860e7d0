"""Search-rule details over raw HTTP: weak Patient params, Observation categories and
`issued`, CarePlan/EpisodeOfCare requirements, 59100 notes on failing searches, 405 creates, 59141 duplicates."""

from __future__ import annotations

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import CAMILA, DERRICK, issue_codes

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("params", [{"birthdate": "1987-09-12"}, {"gender": "female"}, {"given": "Camila"}])
async def test_single_weak_patient_param_is_200_total_0(
    http: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await http.get("Patient", params=params)
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 0
    (entry,) = body["entry"]
    assert issue_codes(entry["resource"]) == ["4101"]


async def test_two_demographics_find_the_patient(http: httpx.AsyncClient) -> None:
    body = (await http.get("Patient", params={"birthdate": "1987-09-12", "family": "Lopez"})).json()
    assert [e["resource"]["id"] for e in body["entry"] if e["search"]["mode"] == "match"] == [CAMILA]


async def test_failing_clinical_search_lists_ignored_params_first(http: httpx.AsyncClient) -> None:
    response = await http.get("Observation", params={"patient": CAMILA, "foo": "1", "bar-baz": "2"})
    assert response.status_code == 400
    body = response.json()
    assert issue_codes(body) == ["59100", "59100", "59108"]
    assert [i["diagnostics"] for i in body["issue"][:2]] == [
        "Unknown parameter: FOO. Parameter has been ignored.",
        "Unknown parameter: BAR-BAZ. Parameter has been ignored.",
    ]
    assert [(i["severity"], i["code"]) for i in body["issue"][:2]] == [("information", "invalid")] * 2


async def test_unknown_params_are_silent_on_success_but_echoed(http: httpx.AsyncClient) -> None:
    body = (await http.get("Condition", params={"patient": CAMILA, "foo": "1"})).json()
    assert "foo=1" in body["link"][0]["url"]
    notes = [i for e in body["entry"] if e["search"]["mode"] == "outcome" for i in e["resource"]["issue"]]
    assert body["total"] == len(body["entry"]) - 1 > 0
    assert not any("FOO" in i.get("diagnostics", "") or i["severity"] != "warning" for i in notes)


async def test_observation_without_patient_is_400(http: httpx.AsyncClient) -> None:
    response = await http.get("Observation", params={"category": "laboratory"})
    assert response.status_code == 400
    assert response.json()["issue"][-1]["severity"] == "fatal"


async def test_careplan_needs_a_category(http: httpx.AsyncClient) -> None:
    response = await http.get("CarePlan", params={"patient": CAMILA})
    assert response.status_code == 400
    assert response.json()["issue"][-1]["diagnostics"] == "This resource requires a category for searching."
    ok = await http.get("CarePlan", params={"patient": CAMILA, "category": "38717003"})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"patient": CAMILA}, 400),
        ({"patient": CAMILA, "type": "some-code"}, 400),
        ({"patient": CAMILA, "type:not": "urn:oid:1.2.3|x"}, 400),
        ({"patient": CAMILA, "type": "urn:oid:1.2.840.114350.1.13.0.1.7.2.726668|1"}, 200),
    ],
)
async def test_episode_of_care_needs_a_system_and_code_type(
    http: httpx.AsyncClient, params: dict[str, str], status: int
) -> None:
    assert (await http.get("EpisodeOfCare", params=params)).status_code == status


async def test_allergy_search_without_patient_is_403_with_an_outcome(http: httpx.AsyncClient) -> None:
    response = await http.get("AllergyIntolerance", params={"clinical-status": "active"})
    assert response.status_code == 403
    issue = response.json()["issue"][-1]
    assert (issue["severity"], issue["code"]) == ("fatal", "processing")


async def test_patient_id_of_another_type_is_400(http: httpx.AsyncClient, sb: EpicSandbox) -> None:
    obs_id = next(iter(sb.dataset.resources["Observation"]))
    response = await http.get("Patient", params={"_id": obs_id})
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert (issue["severity"], issue["code"]) == ("information", "not-found")


async def test_observation_issued_is_searchable(http: httpx.AsyncClient) -> None:
    base = {"patient": DERRICK, "category": "vital-signs", "_count": "1000"}
    first = (await http.get("Observation", params={**base, "_count": "1"})).json()["entry"][0]["resource"]
    day = first["issued"][:10]
    same = (await http.get("Observation", params={**base, "issued": day})).json()
    issued = [e["resource"]["issued"][:10] for e in same["entry"] if e["search"]["mode"] == "match"]
    assert issued
    assert set(issued) == {day}


@pytest.mark.parametrize("rtype", ["Encounter", "MedicationRequest", "Immunization", "DiagnosticReport"])
async def test_create_on_a_type_without_create_is_405(http: httpx.AsyncClient, rtype: str) -> None:
    response = await http.post(
        rtype, json={"resourceType": rtype, "subject": {"reference": f"Patient/{CAMILA}"}}
    )
    assert response.status_code == 405
    assert response.json()["issue"][0]["code"] == "not-supported"


async def test_duplicate_allergy_by_the_same_route_twice_is_59141(http: httpx.AsyncClient) -> None:
    allergy = {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": f"Patient/{DERRICK}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005"}], "text": "Penicillin"},
    }
    assert (await http.post("AllergyIntolerance", json=allergy)).status_code == 201
    again = await http.post("AllergyIntolerance", json=allergy)
    assert again.status_code == 400
    assert issue_codes(again.json()) == ["59141"]


async def test_revinclude_provenance_target(http: httpx.AsyncClient) -> None:
    params = {"patient": CAMILA, "_revinclude": "Provenance:target"}
    body = (await http.get("DocumentReference", params=params)).json()
    matches = [e["resource"]["id"] for e in body["entry"] if e["search"]["mode"] == "match"]
    included = [e["resource"] for e in body["entry"] if e["search"]["mode"] == "include"]
    assert body["total"] == len(matches) > 0
    assert sorted(p["target"][0]["reference"] for p in included) == sorted(
        f"DocumentReference/{m}" for m in matches
    )
    assert all(p["resourceType"] == "Provenance" for p in included)
    provenance = included[0]
    assert (await http.get(f"Provenance/{provenance['id']}")).json() == provenance
    plain = (await http.get("DocumentReference", params={"patient": CAMILA})).json()
    assert all(e["search"]["mode"] == "match" for e in plain["entry"])
    other = (await http.get("Condition", params={**params})).json()  # no Provenance targets a Condition
    assert all(e["search"]["mode"] != "include" for e in other["entry"])
