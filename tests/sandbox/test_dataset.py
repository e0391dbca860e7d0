"""The sandbox's synthetic dataset: determinism, Epic's named patients, shapes and referential integrity."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from epic_fhir_async import _json
from epic_fhir_async.sandbox._data import GROUP_ID, Dataset, build_dataset, generate_observations
from epic_fhir_async.sandbox._data_ids import is_epic_id

CAMILA = "erXuFYUfucBZaryVksYEcMg3"
DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
ELIJAH = "egqBHVfQlt4Bw3XGXoxVxHg3"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB_OID = "urn:oid:1.2.840.114350.1.13.0.1.7.2.768282"
VITAL_OID = "urn:oid:1.2.840.114350.1.13.0.1.7.2.707679"
SMALL = 12  # generated patients for most tests: fast, still covers every kind


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return build_dataset(0, SMALL)


def _uncached(seed: int, patients: int) -> Dataset:
    return build_dataset.__wrapped__(seed, patients)


def _categories(obs: dict[str, Any]) -> set[str]:
    return {cd["code"] for cat in obs["category"] for cd in cat["coding"] if cd["system"] == OBS_CATEGORY}


def _obs_of(ds: Dataset, patient_id: str, category: str) -> list[dict[str, Any]]:
    ids = ds.by_patient["Observation"].get(patient_id, [])
    return [o for o in (ds.resources["Observation"][i] for i in ids) if category in _categories(o)]


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _all_resources(ds: Dataset) -> Iterator[dict[str, Any]]:
    for by_id in ds.resources.values():
        yield from by_id.values()


def test_same_seed_gives_identical_data_and_is_cached() -> None:
    first, second = _uncached(3, 5), _uncached(3, 5)
    assert first is not second
    assert _json.dumps(first.resources) == _json.dumps(second.resources)
    assert first.by_patient == second.by_patient
    assert first.binaries == second.binaries
    assert build_dataset(3, 5) is build_dataset(3, 5)


def test_different_seed_gives_different_data() -> None:
    one, two = _uncached(1, 5), _uncached(2, 5)
    assert one.patient_ids[:8] == two.patient_ids[:8]  # Epic's named patients keep their real ids
    assert one.patient_ids[8:] != two.patient_ids[8:]
    assert _json.dumps(one.resources["Observation"]) != _json.dumps(two.resources["Observation"])


def test_patient_count_and_order(ds: Dataset) -> None:
    assert len(ds.patient_ids) == 8 + SMALL
    assert ds.patient_ids[:2] == [CAMILA, DERRICK]
    assert set(ds.patient_ids) == set(ds.resources["Patient"])
    assert len(build_dataset(0, 0).patient_ids) == 8


def test_camila_lopez(ds: Dataset) -> None:
    patient = ds.resources["Patient"][CAMILA]
    assert patient["birthDate"] == "1987-09-12"
    assert patient["gender"] == "female"
    assert patient["name"][0]["family"] == "Lopez"
    assert patient["name"][0]["given"] == ["Camila", "Maria"]
    values = {i.get("type", {}).get("text"): i["value"] for i in patient["identifier"]}
    assert values["EPI"] == "203713"
    assert values["EPIC"] == "E4007"
    assert values["CEID"] == "FHRLBVD2TLZS69Z"
    assert len(_obs_of(ds, CAMILA, "laboratory")) == 5
    assert len(_obs_of(ds, CAMILA, "vital-signs")) == 245
    assert len(ds.by_patient["Encounter"][CAMILA]) == 10
    assert len(ds.by_patient["DocumentReference"][CAMILA]) == 70
    assert len(ds.by_patient["DiagnosticReport"][CAMILA]) == 4
    assert len(ds.by_patient["Procedure"][CAMILA]) == 2
    assert "eaibpvCkNL9BzrSwueTYNQg3" in ds.by_patient["DocumentReference"][CAMILA]
    assert ds.binaries["eAkaILL5xuep7ieMKl6ZOXA3"][0] == "text/html"


def test_derrick_lin_has_more_than_a_page_of_vitals_and_no_labs(ds: Dataset) -> None:
    assert ds.resources["Patient"][DERRICK]["birthDate"] == "1973-06-03"
    assert len(_obs_of(ds, DERRICK, "vital-signs")) > 1000
    assert _obs_of(ds, DERRICK, "laboratory") == []
    assert not ds.by_patient["Procedure"].get(DERRICK)
    assert "e6kBx6PwnxIv.5kCifScsWg3" in ds.resources["Encounter"]


def test_other_named_patients(ds: Dataset) -> None:
    jason = "eD.LxhDyX35TntF77l7etUA3"
    assert len(ds.by_patient["AllergyIntolerance"][jason]) == 3
    assert len(ds.by_patient["MedicationRequest"][jason]) == 9
    assert len(_obs_of(ds, "eAB3mDIBBcyUKviyzrxsnAw3", "vital-signs")) == 388
    assert len(ds.by_patient["Immunization"]["eAB3mDIBBcyUKviyzrxsnAw3"]) == 7
    assert len(_obs_of(ds, "e0w0LEDCYtfckT6N.CkJKCw3", "laboratory")) == 1
    assert not ds.by_patient["Observation"].get(ELIJAH)
    # Epic's sandbox returns no health concerns for its named patients.
    for pid in ds.patient_ids[:8]:
        for cid in ds.by_patient["Condition"].get(pid, []):
            codes = {cd["code"] for cat in ds.resources["Condition"][cid]["category"] for cd in cat["coding"]}
            assert "health-concern" not in codes


def test_some_generated_patients_have_no_data_of_some_types() -> None:
    big = build_dataset(0, 100)
    generated = big.patient_ids[8:]
    for rtype in ("Observation", "Procedure", "DocumentReference"):
        assert any(not big.by_patient[rtype].get(pid) for pid in generated), rtype
    assert any(all(not big.by_patient[t].get(pid) for t in big.by_patient) for pid in generated)


def test_by_patient_matches_resources_and_is_newest_first(ds: Dataset) -> None:
    for rtype, per_patient in ds.by_patient.items():
        listed = [rid for ids in per_patient.values() for rid in ids]
        assert len(listed) == len(set(listed)) == len(ds.resources[rtype]), rtype
        for pid, ids in per_patient.items():
            assert pid in ds.resources["Patient"]
            for rid in ids:
                res = ds.resources[rtype][rid]
                owner = res["patient"] if "patient" in res else res["subject"]
                assert owner["reference"] == f"Patient/{pid}"
    vitals = [o["effectiveDateTime"] for o in _obs_of(ds, DERRICK, "vital-signs")]
    assert vitals == sorted(vitals, reverse=True)


def test_every_reference_resolves(ds: Dataset) -> None:
    checked = 0
    for resource in _all_resources(ds):
        for key, value in _walk(resource):
            if key in ("reference", "url") and isinstance(value, str) and "/" in value and ":" not in value:
                rtype, rid = value.split("/", 1)
                if rtype == "Binary":
                    assert rid in ds.binaries, value
                else:
                    assert rid in ds.resources[rtype], value
                checked += 1
    assert checked > 5_000


def test_no_meta_and_valid_ids(ds: Dataset) -> None:
    for resource in _all_resources(ds):
        assert "meta" not in resource
        assert all(key != "meta" for key, _ in _walk(resource))
        assert is_epic_id(resource["id"]), resource["id"]
        assert _json.loads(_json.dumps(resource)) == resource  # JSON-ready
    assert all(is_epic_id(bid) for bid in ds.binaries)
    assert not is_epic_id("short")
    assert not is_epic_id("has space in it but is long enough")


def test_observation_shapes_and_dual_codings(ds: Dataset) -> None:
    observations = list(ds.resources["Observation"].values())
    seen = {"vital-signs": 0, "laboratory": 0, "social-history": 0}
    for obs in observations:
        (category,) = _categories(obs)
        seen[category] += 1
        systems = {cd["system"] for cd in obs["code"]["coding"]}
        assert obs["effectiveDateTime"].endswith("Z")
        assert obs["issued"].endswith("Z")
        if category == "vital-signs":
            assert {VITAL_OID, "http://loinc.org"} <= systems
            assert "http://open.epic.com/FHIR/StructureDefinition/observation-flowsheet-id" in systems
        elif category == "laboratory":
            assert {LAB_OID, "http://loinc.org"} <= systems
            cat_systems = {cd["system"] for cat in obs["category"] for cd in cat["coding"]}
            assert "urn:oid:1.2.840.114350.1.13.0.1.7.10.798268.30" in cat_systems
            assert obs["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    assert all(seen.values())
    bp = [o for o in observations if any(cd["code"] == "85354-9" for cd in o["code"]["coding"])]
    assert bp
    assert all(len(o["component"]) == 2 for o in bp)


def test_other_types_have_dual_codings(ds: Dataset) -> None:
    for cond in ds.resources["Condition"].values():
        systems = {cd["system"] for cd in cond["code"]["coding"]}
        assert {"http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10-cm"} <= systems
        assert cond["category"][0]["coding"][0]["code"] in {
            "problem-list-item",
            "encounter-diagnosis",
            "health-concern",
        }
    for enc in ds.resources["Encounter"].values():
        assert all(
            cd["system"].startswith("urn:oid:1.2.840.114350.") for t in enc["type"] for cd in t["coding"]
        )
    patient = ds.resources["Patient"][ds.patient_ids[-1]]
    systems = {i["system"] for i in patient["identifier"]}
    assert "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.0" in systems
    assert "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14" in systems
    internal = next(i["value"] for i in patient["identifier"] if i.get("type", {}).get("text") == "INTERNAL")
    assert internal.startswith(" ")
    assert (
        patient["extension"][0]["url"] == "http://open.epic.com/FHIR/StructureDefinition/extension/legal-sex"
    )


def test_document_references_have_html_and_rtf_binaries(ds: Dataset) -> None:
    assert ds.resources["DocumentReference"]
    for doc in ds.resources["DocumentReference"].values():
        assert any(cd["code"] == "11506-3" for cd in doc["type"]["coding"])
        assert doc["context"]["encounter"][0]["reference"].startswith("Encounter/")
        types = []
        for content in doc["content"]:
            attachment = content["attachment"]
            assert content["format"]["code"] == "urn:ihe:iti:xds:2017:mimeTypeSufficient"
            content_type, body = ds.binaries[attachment["url"].removeprefix("Binary/")]
            assert content_type == attachment["contentType"]
            assert len(body) == attachment["size"]
            types.append(content_type)
            assert body.startswith(b"<html>" if content_type == "text/html" else b"{\\rtf1")
        assert types == ["text/html", "text/rtf"]
    assert len(ds.binaries) == 2 * len(ds.resources["DocumentReference"])


def test_group_lists_every_patient(ds: Dataset) -> None:
    assert ds.group_id == GROUP_ID == "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"
    group = ds.resources["Group"][GROUP_ID]
    assert group["type"] == "person"
    assert group["actual"] is True
    assert [m["entity"]["reference"] for m in group["member"]] == [f"Patient/{p}" for p in ds.patient_ids]


def test_practitioners_and_organization(ds: Dataset) -> None:
    assert {"exfo6E4EXjWsnhA1OGVElgw3", "eUXiD4IyBLJFoR2VHOjfTdg3"} <= set(ds.resources["Practitioner"])
    assert len(ds.resources["Organization"]) == 1


@pytest.mark.parametrize("category", ["vital-signs", "laboratory", "social-history"])
def test_generate_observations(category: str) -> None:
    obs = generate_observations("eTestPatient0000000000003", 300, seed=4, category=category)
    assert len(obs) == 300
    assert len({o["id"] for o in obs}) == 300
    assert all(_categories(o) == {category} for o in obs)
    assert all(o["subject"]["reference"] == "Patient/eTestPatient0000000000003" for o in obs)
    assert obs == generate_observations("eTestPatient0000000000003", 300, seed=4, category=category)
    assert obs != generate_observations("eTestPatient0000000000003", 300, seed=5, category=category)
    if category != "social-history":
        mean = sum(len(_json.dumps(o)) for o in obs) / len(obs)
        assert 1200 < mean < 2200


def test_generate_observations_rejects_unknown_category() -> None:
    with pytest.raises(ValueError, match="category"):
        generate_observations("x" * 24, 1, category="therapy")
