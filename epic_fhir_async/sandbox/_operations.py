"""Epic's ``Patient/$match`` and ``Patient/<id>/$summary`` (docs/epic-notes.md §3.2). No ``$everything``."""

from __future__ import annotations

import datetime
from typing import Any

from .. import _json
from ._data import Dataset
from ._http import Request, Response, outcome, outcome_issue
from ._render import fhir_response

__all__ = ["match_patients", "patient_summary"]

_MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
_SUMMARY_TYPES = ("AllergyIntolerance", "Condition", "MedicationRequest", "Immunization", "Procedure")


def _score(candidate: dict[str, Any], wanted: dict[str, Any]) -> float:
    score = 0.0
    names = candidate.get("name", [])
    families = {str(n.get("family", "")).lower() for n in names}
    givens = {str(g).lower() for n in names for g in n.get("given", [])}
    for name in wanted.get("name", []):
        if str(name.get("family", "")).lower() in families:
            score += 0.35
        if any(str(g).lower() in givens for g in name.get("given", [])):
            score += 0.25
    if wanted.get("birthDate") and wanted.get("birthDate") == candidate.get("birthDate"):
        score += 0.3
    if wanted.get("gender") and wanted.get("gender") == candidate.get("gender"):
        score += 0.1
    return round(min(score, 1.0), 2)


def match_patients(request: Request, dataset: Dataset, base_url: str) -> Response:
    """POST a Parameters with a ``resource`` Patient → searchset of candidates with score and match-grade."""
    try:
        params = _json.loads(request.body)
    except _json.JSONDecodeError:
        issue = outcome_issue("fatal", "structure", "59105", "Invalid JSON syntax.")
        return fhir_response(request, outcome(issue), 400)
    wanted = None
    if isinstance(params, dict):
        for param in params.get("parameter", []):
            if param.get("name") == "resource" and isinstance(param.get("resource"), dict):
                wanted = param["resource"]
    if not isinstance(wanted, dict) or wanted.get("resourceType") != "Patient":
        issue = outcome_issue(
            "fatal", "required", "4111", "Required search parameter missing.",
            diagnostics="A Patient resource parameter is required.",
        )  # fmt: skip
        return fhir_response(request, outcome(issue), 400)
    scored = []
    for pid in dataset.patient_ids:
        score = _score(dataset.resources["Patient"][pid], wanted)
        if score >= 0.5:
            scored.append((score, pid))
    scored.sort(key=lambda item: -item[0])
    entries = []
    for score, pid in scored[:10]:
        grade = "certain" if score >= 0.9 else "probable" if score >= 0.7 else "possible"
        url = f"{base_url}/Patient/{pid}"
        entries.append(
            {
                "link": [{"relation": "self", "url": url}],
                "fullUrl": url,
                "resource": dataset.resources["Patient"][pid],
                "search": {
                    "extension": [{"url": _MATCH_GRADE, "valueCode": grade}],
                    "mode": "match",
                    "score": score,
                },
            }
        )
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
    return fhir_response(request, bundle)


def patient_summary(dataset: Dataset, pid: str, base_url: str) -> dict[str, Any]:
    """An IPS-style document Bundle: Composition, Patient, then the patient's summary resources."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    sections: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base_url}/Patient/{pid}", "resource": dataset.resources["Patient"][pid]}
    ]
    for rtype in _SUMMARY_TYPES:
        ids = dataset.by_patient.get(rtype, {}).get(pid, [])
        refs = []
        for rid in ids:
            entries.append(
                {"fullUrl": f"{base_url}/{rtype}/{rid}", "resource": dataset.resources[rtype][rid]}
            )
            refs.append({"reference": f"{rtype}/{rid}"})
        section: dict[str, Any] = {"title": rtype}
        if refs:
            section["entry"] = refs
        else:
            section["emptyReason"] = {"text": "No information available"}
        sections.append(section)
    composition = {
        "resourceType": "Composition",
        "status": "final",
        "type": {
            "coding": [
                {"system": "http://loinc.org", "code": "60591-5", "display": "Patient summary Document"}
            ]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "date": now,
        "title": "International Patient Summary",
        "section": sections,
    }
    return {
        "resourceType": "Bundle",
        "type": "document",
        "timestamp": now,
        "entry": [{"fullUrl": f"urn:uuid:composition-{pid}", "resource": composition}, *entries],
    }
