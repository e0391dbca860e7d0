"""Reads and searches: Epic's per-type rules, OperationOutcomes, filters and the searchset shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import CAMILA, DERRICK, EPIC_SYSTEM, JASON, JSON_ACCEPT, issue_codes

pytestmark = pytest.mark.anyio


async def test_read_unknown_id_is_epic_59008(http: httpx.AsyncClient) -> None:
    response = await http.get("Patient/does-not-exist")
    assert response.status_code == 404
    assert response.json() == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "fatal",
                "code": "not-found",
                "details": {
                    "coding": [
                        {
                            "system": EPIC_SYSTEM,
                            "code": "59008",
                            "display": "The FHIR ID provided was not found.",
                        }
                    ],
                    "text": "The FHIR ID provided was not found.",
                },
                "diagnostics": "Invalid FHIR ID provided",
                "location": ["/f:id"],
                "expression": ["id"],
            }
        ],
    }


async def test_read_has_no_meta(http: httpx.AsyncClient) -> None:
    patient = (await http.get(f"Patient/{CAMILA}")).json()
    assert patient["id"] == CAMILA
    assert "meta" not in patient
    assert patient["name"][0]["family"] == "Lopez"


async def test_patient_search_needs_demographics(http: httpx.AsyncClient) -> None:
    response = await http.get("Patient", params={"foo": "bar"})
    assert response.status_code == 400
    body = response.json()
    assert issue_codes(body) == ["59100", "59159"]
    assert body["issue"][0]["diagnostics"] == "Unknown parameter: FOO. Parameter has been ignored."
    assert body["issue"][0]["severity"] == "information"
    fatal = body["issue"][1]
    assert (fatal["severity"], fatal["code"]) == ("fatal", "business-rule")
    assert fatal["diagnostics"] == "This resource requires demographics or _id parameter for searching."
    assert fatal["location"] == ["/f:demographics/_id"]


async def test_patient_search_weak_single_param_finds_nobody(http: httpx.AsyncClient) -> None:
    body = (await http.get("Patient", params={"family": "Lopez"})).json()
    assert body["total"] == 0
    assert [e["search"]["mode"] for e in body["entry"]] == ["outcome"]


async def test_patient_search_strong_demographics_and_ids(http: httpx.AsyncClient, sb: EpicSandbox) -> None:
    found = (await http.get("Patient", params={"family": "Lopez", "given": "Camila"})).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [CAMILA]
    by_id = (await http.get("Patient", params={"_id": CAMILA})).json()
    assert by_id["total"] == 1
    assert by_id["entry"][0]["fullUrl"] == f"{sb.base_url}/Patient/{CAMILA}"
    by_mrn = (await http.get("Patient", params={"identifier": "E4007"})).json()
    assert [e["resource"]["id"] for e in by_mrn["entry"]] == [CAMILA]
    ranged = await http.get("Patient", params={"family": "Lopez", "birthdate": "ge1980-01-01"})
    assert ranged.status_code == 400
    assert "A single valid date is required for birthdate" in ranged.text


async def test_observation_needs_category_or_code(http: httpx.AsyncClient) -> None:
    response = await http.get("Observation", params={"patient": CAMILA})
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert (issue["severity"], issue["code"], issue["details"]["coding"][0]["code"]) == (
        "fatal",
        "required",
        "59108",
    )


@pytest.mark.parametrize("category", ["procedure", "therapy", "activity", "nonsense"])
async def test_observation_rejects_bad_categories(http: httpx.AsyncClient, category: str) -> None:
    response = await http.get("Observation", params={"patient": CAMILA, "category": category})
    assert response.status_code == 400
    assert issue_codes(response.json()) == ["59111"]


@pytest.mark.parametrize(
    ("rtype", "params", "status", "code"),
    [
        ("Condition", {"category": "problem-list-item"}, 400, "business-rule"),
        ("Encounter", {}, 400, "business-rule"),
        ("MedicationRequest", {"intent": "order"}, 400, "business-rule"),
        ("Observation", {"_count": "1"}, 400, "business-rule"),
        # Epic answers these two with "required" rather than "business-rule" (docs/epic-notes.md §3.3).
        ("DocumentReference", {"category": "clinical-note"}, 400, "required"),
        ("Procedure", {"status": "completed"}, 400, "required"),
        ("AllergyIntolerance", {}, 403, "processing"),
        ("CarePlan", {"patient": CAMILA}, 400, "business-rule"),
        ("EpisodeOfCare", {"patient": CAMILA, "type": "x"}, 400, "business-rule"),
    ],
)
async def test_type_rules(
    http: httpx.AsyncClient, rtype: str, params: dict[str, str], status: int, code: str
) -> None:
    response = await http.get(rtype, params=params)
    assert response.status_code == status
    issue = response.json()["issue"][-1]
    assert issue["severity"] == "fatal"
    assert issue["code"] == code


async def test_id_of_another_type_is_information_not_found(http: httpx.AsyncClient) -> None:
    response = await http.get("Condition", params={"_id": CAMILA})
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert (issue["severity"], issue["code"]) == ("information", "not-found")


async def test_searchset_shape_and_self_link(http: httpx.AsyncClient, sb: EpicSandbox) -> None:
    params = {"patient": CAMILA, "category": "laboratory", "zzz": "1", "_count": "50"}
    body = (await http.get("Observation", params=params)).json()
    assert set(body) == {"resourceType", "type", "total", "link", "entry"}
    assert body["type"] == "searchset"
    assert body["link"] == [
        {
            "relation": "self",
            "url": f"{sb.base_url}/Observation?category=laboratory&patient={CAMILA}&zzz=1&_count=50",
        }
    ]
    *matches, outcome = body["entry"]
    assert body["total"] == len(matches) > 0
    # Epic's sandbox ends nearly every clinical searchset with "Outside Record" warnings (docs/epic-notes.md
    # §3.6): a client that counts entries, or yields the outcome as data, is wrong against it.
    assert outcome["search"] == {"mode": "outcome"}
    assert [i["diagnostics"] for i in outcome["resource"]["issue"]] == [
        "Client not authorized for Observation - Outside Record Results. Search results of this type have not "
        "been included."
    ]
    for entry in matches:
        url = f"{sb.base_url}/Observation/{entry['resource']['id']}"
        assert entry["fullUrl"] == url
        assert entry["link"] == [{"relation": "self", "url": url}]
        assert entry["search"] == {"mode": "match"}
        cats = {c["code"] for cat in entry["resource"]["category"] for c in cat["coding"]}
        assert "laboratory" in cats


async def test_empty_search_is_total_0_with_4101(http: httpx.AsyncClient) -> None:
    body = (await http.get("Observation", params={"patient": JASON, "category": "vital-signs"})).json()
    assert body["total"] == 0
    (entry,) = body["entry"]
    assert entry["search"] == {"mode": "outcome"}
    assert entry["fullUrl"].startswith("urn:uuid:")
    assert "id" not in entry["resource"]
    assert issue_codes(entry["resource"]) == ["59204", "4101"]  # Outside Record Vital Signs, then no results


async def test_post_search_with_form_body(http: httpx.AsyncClient) -> None:
    get = (
        await http.get("Observation", params={"patient": DERRICK, "category": "vital-signs", "_count": 5})
    ).json()
    post = (
        await http.post(
            "Observation/_search", data={"patient": DERRICK, "category": "vital-signs", "_count": "5"}
        )
    ).json()
    assert [e["resource"]["id"] for e in post["entry"]] == [e["resource"]["id"] for e in get["entry"]]


async def test_code_and_date_filters(http: httpx.AsyncClient) -> None:
    base = {"patient": DERRICK, "category": "vital-signs"}
    everything = (await http.get("Observation", params={**base, "_summary": "count"})).json()["total"]
    first = (await http.get("Observation", params={**base, "_count": 1})).json()["entry"][0]["resource"]
    coding = next(c for c in first["code"]["coding"] if c["system"] == "http://loinc.org")
    by_code = await http.get("Observation", params={**base, "code": f"http://loinc.org|{coding['code']}"})
    assert _ids(by_code.json())
    for entry in by_code.json()["entry"]:
        if entry["search"]["mode"] != "match":
            continue
        assert coding["code"] in {c["code"] for c in entry["resource"]["code"]["coding"]}
    day = first["effectiveDateTime"][:10]
    newer = (await http.get("Observation", params={**base, "date": f"ge{day}", "_count": 1000})).json()
    older = (await http.get("Observation", params={**base, "date": f"lt{day}", "_summary": "count"})).json()
    matches = [e["resource"] for e in newer["entry"] if e["search"]["mode"] == "match"]
    assert matches
    assert all(r["effectiveDateTime"][:10] >= day for r in matches)
    assert newer["total"] + older["total"] == everything


async def test_clinical_status_filter(http: httpx.AsyncClient) -> None:
    body = (await http.get("Condition", params={"patient": CAMILA, "clinical-status": "active"})).json()
    statuses = {
        e["resource"]["clinicalStatus"]["coding"][0]["code"] for e in body["entry"] if "id" in e["resource"]
    }
    assert statuses <= {"active"}


async def test_unknown_param_warning_mode(sb: EpicSandbox) -> None:
    warn = EpicSandbox(seed=0, patients=5, unknown_params="warn")
    headers = {"Authorization": f"Bearer {warn.issue_token('c')}", **JSON_ACCEPT}
    async with httpx.AsyncClient(transport=warn.transport(), base_url=warn.base_url, headers=headers) as raw:
        body = (await raw.get("Condition", params={"patient": CAMILA, "bogus": "1"})).json()
    outcomes = [e for e in body["entry"] if e["search"]["mode"] == "outcome"]
    assert issue_codes(outcomes[0]["resource"])[0] == "4122"


async def test_subtype_not_authorized_gives_59204_and_drops_results(sb: EpicSandbox) -> None:
    from joserfc.jwk import ECKey

    jwks = {"keys": [{**ECKey.generate_key("P-256").as_dict(private=False), "kid": "k"}]}
    sb.register_client("vitals-only", jwks, resource_types=["Patient", "Observation?category=vital-signs"])
    headers = {"Authorization": f"Bearer {sb.issue_token('vitals-only')}", **JSON_ACCEPT}
    async with httpx.AsyncClient(transport=sb.transport(), base_url=sb.base_url, headers=headers) as raw:
        labs = (await raw.get("Observation", params={"patient": CAMILA, "category": "laboratory"})).json()
        vitals = (await raw.get("Observation", params={"patient": CAMILA, "category": "vital-signs"})).json()
    assert labs["total"] == 0
    codes = [c for e in labs["entry"] for c in issue_codes(e["resource"])]
    assert "59204" in codes
    assert vitals["total"] > 0
    hidden = [
        i["diagnostics"]
        for e in vitals["entry"]
        if e["search"]["mode"] == "outcome"
        for i in e["resource"]["issue"]
    ]
    assert hidden == [
        "Client not authorized for Observation - Outside Record Vital Signs. Search results of this type have "
        "not been included."
    ]  # the granted sub-type is not reported as hidden


def _ids(body: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]


async def test_outside_record_warnings_can_be_switched_off() -> None:
    quiet = EpicSandbox(seed=0, patients=2, outside_records=False)
    headers = {"Authorization": f"Bearer {quiet.issue_token('c')}", **JSON_ACCEPT}
    async with httpx.AsyncClient(
        transport=quiet.transport(), base_url=quiet.base_url, headers=headers
    ) as raw:
        body = (await raw.get("Condition", params={"patient": CAMILA})).json()
    assert body["total"] == len(body["entry"]) > 0


@pytest.mark.parametrize(
    ("rtype", "params", "labels"),
    [
        ("AllergyIntolerance", {}, ["Client: Outside Record"]),
        ("Condition", {"category": "problem-list-item"}, ["Client: Outside Record Problems"]),
        (
            "Condition",
            {"category": "health-concern"},
            ["Client: Outside Record Problems", "Client: Outside Record Health Concern"],
        ),
        ("DiagnosticReport", {"category": "LAB"}, ["Client: Outside Record Results"]),
        ("Procedure", {}, ["User: External Radiotherapy Summary", "Client: Outside Record"]),
        ("Observation", {"category": "social-history"}, []),
        ("DocumentReference", {}, []),
    ],
)
async def test_searchsets_carry_epics_outside_record_warnings(
    http: httpx.AsyncClient, rtype: str, params: dict[str, str], labels: list[str]
) -> None:
    body = (await http.get(rtype, params={"patient": CAMILA, **params})).json()
    issues = [i for e in body["entry"] if e["search"]["mode"] == "outcome" for i in e["resource"]["issue"]]
    shown = [
        f"{i['diagnostics'].split(' not')[0]}: {i['diagnostics'].split(' - ', 1)[1].split('. Search')[0]}"
        for i in issues
        if i["details"]["coding"][0]["code"] in ("59204", "59205")
    ]
    assert shown == labels
    assert all(
        i["severity"] == "warning" and i["code"] == "suppressed"
        for i in issues
        if i["details"]["coding"][0]["code"] != "4101"
    )


async def test_total_excludes_outcome_entries(sb: EpicSandbox) -> None:
    from joserfc.jwk import ECKey

    jwks = {"keys": [{**ECKey.generate_key("P-256").as_dict(private=False), "kid": "k"}]}
    sb.register_client("labs-only", jwks, resource_types=["Observation?category=laboratory"])
    headers = {"Authorization": f"Bearer {sb.issue_token('labs-only')}", **JSON_ACCEPT}
    async with httpx.AsyncClient(transport=sb.transport(), base_url=sb.base_url, headers=headers) as raw:
        body = (
            await raw.get("Observation", params={"patient": CAMILA, "category": "laboratory,vital-signs"})
        ).json()
    assert body["total"] == len(_ids(body)) > 0
    assert len(body["entry"]) == body["total"] + 1


async def test_include_adds_referenced_resources_outside_total(http: httpx.AsyncClient) -> None:
    params = {"patient": CAMILA, "category": "laboratory", "_include": "Observation:patient"}
    body = (await http.get("Observation", params=params)).json()
    included = [e for e in body["entry"] if e["search"]["mode"] == "include"]
    assert [e["resource"]["id"] for e in included] == [CAMILA]
    assert body["total"] == len([e for e in body["entry"] if e["search"]["mode"] == "match"])
    plain = (await http.get("Observation", params={"patient": CAMILA, "category": "laboratory"})).json()
    assert all(e["search"]["mode"] != "include" for e in plain["entry"])
