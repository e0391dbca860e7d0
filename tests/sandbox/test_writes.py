"""Writes, Binary and operations."""

from __future__ import annotations

import base64

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import CAMILA, issue_codes

pytestmark = pytest.mark.anyio

_CONDITION = {
    "resourceType": "Condition",
    "subject": {"reference": f"Patient/{CAMILA}"},
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}], "text": "Hypertension"},
    "category": [{"coding": [{"code": "problem-list-item"}]}],
}


async def test_create_then_read_and_search(http: httpx.AsyncClient, sb: EpicSandbox) -> None:
    created = await http.post("Condition", json=_CONDITION)
    assert created.status_code == 201
    location = created.headers["location"]
    assert location.startswith(f"{sb.base_url}/Condition/")
    new_id = location.rsplit("/", 1)[1]
    assert (await http.get(f"Condition/{new_id}")).json()["code"]["text"] == "Hypertension"
    found = (await http.get("Condition", params={"patient": CAMILA, "code": "38341003"})).json()
    assert [e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "match"] == [new_id]
    other = EpicSandbox(seed=0, patients=20)  # writes never leak into another sandbox
    assert new_id not in other.dataset.resources["Condition"]


async def test_create_with_representation(http: httpx.AsyncClient) -> None:
    created = await http.post("Condition", json=_CONDITION, headers={"Prefer": "return=representation"})
    assert created.status_code == 201
    assert created.json()["id"] == created.headers["location"].rsplit("/", 1)[1]


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "MedicationRequest"), ("PUT", "Patient/x"), ("DELETE", f"Patient/{CAMILA}")]
)
async def test_unsupported_writes_are_405(http: httpx.AsyncClient, method: str, path: str) -> None:
    response = await http.request(method, path, json={"resourceType": path.split("/")[0]})
    assert response.status_code == 405
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_invalid_json_is_59105(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "Condition", content=b"{not json", headers={"Content-Type": "application/fhir+json"}
    )
    assert response.status_code == 400
    assert issue_codes(response.json()) == ["59105"]


async def test_update_existing_and_unknown(http: httpx.AsyncClient, sb: EpicSandbox) -> None:
    obs_id = next(iter(sb.dataset.resources["Observation"]))
    resource = (await http.get(f"Observation/{obs_id}")).json()
    resource["status"] = "amended"
    assert (await http.put(f"Observation/{obs_id}", json=resource)).status_code == 200
    assert (await http.get(f"Observation/{obs_id}")).json()["status"] == "amended"
    missing = await http.put("Observation/unknown-id", json={**resource, "id": "unknown-id"})
    assert missing.status_code == 404
    assert issue_codes(missing.json()) == ["59008"]


async def test_duplicate_allergy_is_59141(http: httpx.AsyncClient, sb: EpicSandbox) -> None:
    pid, ids = next((p, i) for p, i in sb.dataset.by_patient["AllergyIntolerance"].items() if i)
    existing = sb.dataset.resources["AllergyIntolerance"][ids[0]]
    body = {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": f"Patient/{pid}"},
        "code": existing["code"],
    }
    response = await http.post("AllergyIntolerance", json=body)
    assert response.status_code == 400
    assert issue_codes(response.json()) == ["59141"]


async def test_binary_raw_fhir_and_unknown(http: httpx.AsyncClient, sb: EpicSandbox) -> None:
    binary_id, (ctype, data) = next(iter(sb.dataset.binaries.items()))
    raw = await http.get(f"Binary/{binary_id}", headers={"Accept": ctype})
    assert raw.status_code == 200
    assert raw.content == data
    assert raw.headers["content-type"] == ctype
    fhir = (await http.get(f"Binary/{binary_id}")).json()
    assert fhir["resourceType"] == "Binary"
    assert base64.b64decode(fhir["data"]) == data
    missing = await http.get("Binary/nope")
    assert missing.status_code == 404
    assert issue_codes(missing.json()) == ["59144"]


async def test_patient_match(http: httpx.AsyncClient) -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "resource",
                "resource": {
                    "resourceType": "Patient",
                    "name": [{"family": "Lopez", "given": ["Camila"]}],
                    "birthDate": "1987-09-12",
                },
            }
        ],
    }
    body = (await http.post("Patient/$match", json=params)).json()
    assert body["type"] == "searchset"
    top = body["entry"][0]
    assert top["resource"]["id"] == CAMILA
    assert top["search"]["extension"][0]["valueCode"] == "certain"
    bad = await http.post("Patient/$match", content=b"nope")
    assert bad.status_code == 400


async def test_patient_summary(http: httpx.AsyncClient) -> None:
    body = (await http.get(f"Patient/{CAMILA}/$summary")).json()
    assert body["type"] == "document"
    assert body["entry"][0]["resource"]["resourceType"] == "Composition"
    assert body["entry"][1]["resource"]["id"] == CAMILA
    assert (await http.get("Patient/unknown/$summary")).status_code == 404
