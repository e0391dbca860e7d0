"""Builders for the sandbox's clinical resources, shaped like Epic's (docs/epic-notes.md §3.6, §3.10, §3.12).

Each builder returns ``(resource, age)`` where ``age`` is seconds before the data anchor, used to order a
patient's resources newest first as Epic does. Small constant sub-objects (category, code) are shared between
resources to keep building fast: the dataset is read-only, copy a resource before changing it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from . import _data_codes as c
from ._data_ids import DAY, long_id, short_id, timestamp

Built = tuple[dict[str, Any], int]
_YEARS = 3 * 365 * DAY  # data spread over the three years before the anchor


@dataclass
class PatientContext:
    """What every builder needs to know about the patient it writes for."""

    rng: random.Random
    patient_id: str
    display: str
    practitioners: list[dict[str, Any]]  # shared reference dicts {"reference", "display"}
    organization: dict[str, Any]
    encounters: list[tuple[dict[str, Any], int]] = field(default_factory=list)  # (reference dict, age)
    subject: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.subject = {"reference": f"Patient/{self.patient_id}", "display": self.display}

    def encounter(self) -> tuple[dict[str, Any] | None, int]:
        """A random encounter of this patient (reference dict, age), or ``(None, random age)`` if it has none."""
        if not self.encounters:
            return None, self.rng.randrange(DAY, _YEARS)
        return self.encounters[self.rng.randrange(len(self.encounters))]

    def practitioner(self) -> dict[str, Any]:
        return self.practitioners[self.rng.randrange(len(self.practitioners))]


def concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    """A one-coding ``CodeableConcept`` whose ``text`` defaults to the display."""
    return {"coding": [c.coding(system, code, display)], "text": text or display}


def _obs_category(code: str) -> list[dict[str, Any]]:
    display = c.OBS_CATEGORY_DISPLAY[code]
    cat = [{"coding": [c.coding(c.OBS_CATEGORY, code, display)], "text": display}]
    if code == "laboratory":
        # Epic adds its own "Lab" category slice after the HL7 one (docs/epic-notes.md §3.12).
        cat.append({"coding": [c.coding(c.EPIC_LAB_CATEGORY, "Lab", "Lab")], "text": "Lab"})
    return cat


_CATEGORIES = {code: _obs_category(code) for code in c.OBS_CATEGORY_DISPLAY}
_TEMPLATE_EXT = {
    "vital-signs": [
        {"valueIdentifier": {"system": c.EPIC_TEMPLATE, "value": "31020"}, "url": c.EXT_TEMPLATE}
    ],
    "laboratory": [{"valueIdentifier": {"system": c.EPIC_TEMPLATE, "value": "10452"}, "url": c.EXT_TEMPLATE}],
    "social-history": [
        {"valueIdentifier": {"system": c.EPIC_TEMPLATE, "value": "8014"}, "url": c.EXT_TEMPLATE}
    ],
}
_VITAL_CODES = [
    {
        "coding": [
            c.coding(c.EPIC_VITAL_CODE, epic, text),
            c.coding(c.FLOWSHEET_ID, flowsheet, text),
            *(c.coding(c.LOINC, code, display) for code, display in loincs),
        ],
        "text": text,
    }
    for epic, flowsheet, text, loincs, *_ in c.VITALS
]
_BP_CODE = {
    "coding": [
        c.coding(c.EPIC_VITAL_CODE, c.BP_EPIC[0], c.BP_EPIC[2]),
        c.coding(c.FLOWSHEET_ID, c.BP_EPIC[1], c.BP_EPIC[2]),
        # Epic also lists the component LOINCs under a foreign OID (seen on sandbox vitals,
        # docs/epic-notes.md §3.12).
        c.coding("urn:oid:1.2.246.537.6.96", "8462-4"),
        c.coding("urn:oid:1.2.246.537.6.96", "8480-6"),
        *(c.coding(c.LOINC, code, display) for code, display in c.BP_LOINC),
    ],
    "text": c.BP_EPIC[2],
}
_BP_COMPONENT_CODES = (
    concept(c.LOINC, "8480-6", "Systolic blood pressure"),
    concept(c.LOINC, "8462-4", "Diastolic blood pressure"),
)
_LAB_CODES = [
    {"coding": [c.coding(c.EPIC_LAB_CODE, epic, name), c.coding(c.LOINC, loinc, name)], "text": name}
    for epic, loinc, name, *_ in c.LABS
]
_SMOKING_CODE = {
    "coding": [
        c.coding(c.LOINC, "72166-2", "Tobacco smoking status"),
    ],
    "text": "Tobacco smoking status",
}
_INTERP = {
    "N": concept(c.INTERPRETATION, "N", "Normal"),
    "H": concept(c.INTERPRETATION, "H", "High"),
    "L": concept(c.INTERPRETATION, "L", "Low"),
}


def observation(
    rng: random.Random,
    obs_id: str,
    subject: dict[str, Any],
    encounter: dict[str, Any] | None,
    performer: dict[str, Any],
    age: int,
    category: str,
) -> dict[str, Any]:
    """One Observation of ``category`` (vital-signs / laboratory / social-history) dated ``age`` s before anchor."""
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "extension": _TEMPLATE_EXT[category],
        "status": "final",
        "category": _CATEGORIES[category],
    }
    if category == "vital-signs":
        pick = rng.randrange(len(c.VITALS) + 2)  # blood pressure is the most common vital, as at Epic
        if pick >= len(c.VITALS):
            obs["code"] = _BP_CODE
            systolic = int(rng.gauss(122, 12))
            diastolic = int(rng.gauss(79, 8))
            value: dict[str, Any] = {
                "component": [
                    {"code": _BP_COMPONENT_CODES[0], "valueQuantity": c.quantity(systolic, "mm[Hg]")},
                    {"code": _BP_COMPONENT_CODES[1], "valueQuantity": c.quantity(diastolic, "mm[Hg]")},
                ]
            }
        else:
            _, _, _, _, unit, mean, spread, decimals = c.VITALS[pick]
            obs["code"] = _VITAL_CODES[pick]
            number = round(rng.gauss(mean, spread), decimals)
            value = {"valueQuantity": c.quantity(int(number) if decimals == 0 else number, unit)}
    elif category == "laboratory":
        pick = rng.randrange(len(c.LABS))
        _, _, _, unit, low, high, decimals = c.LABS[pick]
        obs["code"] = _LAB_CODES[pick]
        width = high - low
        number = round(rng.uniform(low - 0.2 * width, high + 0.2 * width), decimals)
        flag = "H" if number > high else "L" if number < low else "N"
        value = {
            "valueQuantity": c.quantity(int(number) if decimals == 0 else number, unit),
            "interpretation": [_INTERP[flag]],
            "referenceRange": [
                {
                    "low": c.quantity(low, unit),
                    "high": c.quantity(high, unit),
                    "text": f"{low:g} - {high:g} {unit}",
                }
            ],
        }
    else:
        code, text = c.SMOKING[rng.randrange(len(c.SMOKING))]
        obs["code"] = _SMOKING_CODE
        value = {"valueCodeableConcept": concept(c.SNOMED, code, text)}
    obs["subject"] = subject
    if encounter is not None:
        obs["encounter"] = encounter
    obs["effectiveDateTime"] = timestamp(age)
    obs["issued"] = timestamp(age - rng.randrange(60, 7200))
    obs["performer"] = [performer]
    obs.update(value)
    return obs


def make_observation(ctx: PatientContext, category: str) -> Built:
    """An Observation for this patient, tied to one of its encounters."""
    encounter, enc_age = ctx.encounter()
    age = max(60, enc_age - ctx.rng.randrange(0, 4 * 3600))
    obs = observation(ctx.rng, long_id(ctx.rng), ctx.subject, encounter, ctx.practitioner(), age, category)
    return obs, age


def make_encounter(ctx: PatientContext) -> Built:
    """An Encounter with Epic OID type codings and a CSN identifier (docs/epic-notes.md §3.12)."""
    rng = ctx.rng
    etype, etext, vcode, vtext, klass, _ = c.ENCOUNTER_TYPES[rng.randrange(len(c.ENCOUNTER_TYPES))]
    enc_id, csn, age = short_id(rng), str(rng.randrange(10_000, 99_999_999)), rng.randrange(DAY, _YEARS)
    length = rng.randrange(2, 6) * DAY if klass == "IMP" else rng.randrange(900, 3600)
    participant = ctx.practitioner()
    enc = {
        "resourceType": "Encounter",
        "id": enc_id,
        "identifier": [{"use": "usual", "system": c.EPIC_CSN, "value": csn}],
        "status": "finished",
        "class": c.coding(c.EPIC_ENC_CLASS, *c.EPIC_CLASSES[klass]),
        "type": [
            {"coding": [c.coding(c.EPIC_ENC_TYPE, etype, etext)], "text": etext},
            {"coding": [c.coding(c.EPIC_VISIT_TYPE, vcode, vtext)], "text": vtext},
        ],
        "subject": ctx.subject,
        "participant": [
            {
                "type": [
                    concept("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "ATND", "attender")
                ],
                "individual": participant,
            }
        ],
        "period": {"start": timestamp(age), "end": timestamp(age - length)},
        "serviceProvider": ctx.organization,
    }
    ref = {
        "reference": f"Encounter/{enc_id}",
        "identifier": {"use": "usual", "system": c.EPIC_CSN, "value": csn},
        "display": etext,
    }
    ctx.encounters.append((ref, age))
    return enc, age


_COND_CATEGORY = {
    "problem-list-item": [concept(c.COND_CATEGORY, "problem-list-item", "Problem List Item")],
    "encounter-diagnosis": [concept(c.COND_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")],
    "health-concern": [concept(c.US_CORE_COND_CATEGORY, "health-concern", "Health Concern")],
}


def make_condition(ctx: PatientContext, category: str) -> Built:
    """A Condition with SNOMED + ICD-10-CM + Epic codings and an HL7/US Core category."""
    rng = ctx.rng
    snomed, icd, text = c.CONDITIONS[rng.randrange(len(c.CONDITIONS))]
    encounter, age = ctx.encounter()
    active = rng.random() < 0.75
    cond: dict[str, Any] = {
        "resourceType": "Condition",
        "id": short_id(rng),
        "clinicalStatus": concept(
            c.COND_CLINICAL, "active" if active else "resolved", "Active" if active else "Resolved"
        ),
        "verificationStatus": concept(c.COND_VERIFICATION, "confirmed", "Confirmed"),
        "category": _COND_CATEGORY[category],
        "code": {
            "coding": [
                c.coding(c.EPIC_PROBLEM, str(100000 + int(snomed) % 900000), text),
                c.coding(c.ICD10, icd, text),
                c.coding(c.SNOMED, snomed, text),
            ],
            "text": text,
        },
        "subject": ctx.subject,
    }
    if category == "encounter-diagnosis" and encounter is not None:
        cond["encounter"] = encounter
    cond["onsetDateTime"] = timestamp(age + rng.randrange(0, 400) * DAY)
    cond["recordedDate"] = timestamp(age)
    cond["recorder"] = ctx.practitioner()
    if not active:
        cond["abatementDateTime"] = timestamp(max(DAY, age - rng.randrange(7, 200) * DAY))
    return cond, age


def make_medication_request(ctx: PatientContext, medications: list[dict[str, Any]]) -> Built:
    """A MedicationRequest pointing at one of the dataset's Medication resources."""
    rng = ctx.rng
    index = rng.randrange(len(medications))
    encounter, age = ctx.encounter()
    active = rng.random() < 0.6
    req: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": short_id(rng),
        "status": "active" if active else "completed",
        "intent": "order",
        "category": [concept(c.MEDREQ_CATEGORY, "community", "Community")],
        "medicationReference": medications[index],
        "subject": ctx.subject,
    }
    if encounter is not None:
        req["encounter"] = encounter
    req["authoredOn"] = timestamp(age)
    req["requester"] = ctx.practitioner()
    req["dosageInstruction"] = [
        {"text": c.MEDICATIONS[index][2], "timing": {"repeat": {"boundsPeriod": {"start": timestamp(age)}}}}
    ]
    req["dispenseRequest"] = {
        "numberOfRepeatsAllowed": rng.randrange(0, 6),
        "quantity": {"value": 30, "unit": "Tablet"},
    }
    return req, age


def make_allergy(ctx: PatientContext, allergy_id: str | None = None) -> Built:
    """An AllergyIntolerance (references its patient as ``patient``, not ``subject``)."""
    rng = ctx.rng
    code, text, category, rcode, rtext = c.ALLERGIES[rng.randrange(len(c.ALLERGIES))]
    age = rng.randrange(DAY, _YEARS)
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": allergy_id or long_id(rng),
        "clinicalStatus": concept(c.ALLERGY_CLINICAL, "active", "Active"),
        "verificationStatus": concept(c.ALLERGY_VERIFICATION, "confirmed", "Confirmed"),
        "category": [category],
        "criticality": "high" if rcode == "39579001" else "low",
        "code": {
            "coding": [
                c.coding(c.EPIC_ALLERGEN, str(rng.randrange(1000, 99999)), text),
                c.coding(c.SNOMED, code, text),
            ],
            "text": text,
        },
        "patient": ctx.subject,
        "recordedDate": timestamp(age),
        "recorder": ctx.practitioner(),
        "reaction": [{"manifestation": [concept(c.SNOMED, rcode, rtext)], "severity": "moderate"}],
    }
    return allergy, age


def _completed_event(ctx: PatientContext, resource_type: str, body: dict[str, Any], date_field: str) -> Built:
    """A ``completed`` resource at one of the patient's encounters (if any), dated ``date_field``.

    Epic's Immunization and Procedure share this shape; the caller adds what follows the date (performer ...).
    """
    encounter, age = ctx.encounter()
    resource: dict[str, Any] = {
        "resourceType": resource_type,
        "id": short_id(ctx.rng),
        "status": "completed",
        **body,
    }
    if encounter is not None:
        resource["encounter"] = encounter
    resource[date_field] = timestamp(age)
    return resource, age


def make_immunization(ctx: PatientContext) -> Built:
    """An Immunization with CVX + Epic codings (references its patient as ``patient``)."""
    rng = ctx.rng
    cvx, epic, text = c.IMMUNIZATIONS[rng.randrange(len(c.IMMUNIZATIONS))]
    vaccine = {"coding": [c.coding(c.EPIC_IMM, epic, text), c.coding(c.CVX, cvx, text)], "text": text}
    imm, age = _completed_event(
        ctx, "Immunization", {"vaccineCode": vaccine, "patient": ctx.subject}, "occurrenceDateTime"
    )
    imm["primarySource"] = True
    imm["lotNumber"] = f"LOT{rng.randrange(10000, 99999)}"
    imm["performer"] = [{"actor": ctx.practitioner()}]
    return imm, age


def make_procedure(ctx: PatientContext) -> Built:
    """A Procedure with CPT + SNOMED + Epic codings."""
    rng = ctx.rng
    cpt, snomed, text = c.PROCEDURES[rng.randrange(len(c.PROCEDURES))]
    codings = [c.coding(c.EPIC_PROC, cpt, text), c.coding(c.CPT, cpt, text), c.coding(c.SNOMED, snomed, text)]
    body = {
        "category": concept(c.SNOMED, "103693007", "Diagnostic procedure"),
        "code": {"coding": codings, "text": text},
        "subject": ctx.subject,
    }
    proc, age = _completed_event(ctx, "Procedure", body, "performedDateTime")
    proc["performer"] = [{"actor": ctx.practitioner()}]
    return proc, age


def make_diagnostic_report(ctx: PatientContext, results: list[tuple[str, int]]) -> Built:
    """A lab DiagnosticReport whose ``result`` references existing lab Observations ``(id, age)``."""
    rng = ctx.rng
    loinc, name, epic = c.LAB_PANELS[rng.randrange(len(c.LAB_PANELS))]
    encounter, age = ctx.encounter()
    if results:
        age = results[0][1]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": short_id(rng),
        "identifier": [
            {"use": "official", "system": f"{c.EPIC}.2.798268", "value": str(rng.randrange(10**6, 10**8))}
        ],
        "status": "final",
        "category": [
            concept(c.DIAG_SERVICE, "LAB", "Laboratory"),
            {"coding": [c.coding(c.EPIC_LAB_CATEGORY, "Lab", "Lab")], "text": "Lab"},
        ],
        "code": {
            "coding": [c.coding(f"{c.EPIC}.2.696580", epic, name), c.coding(c.LOINC, loinc, name)],
            "text": name,
        },
        "subject": ctx.subject,
    }
    if encounter is not None:
        report["encounter"] = encounter
    report["effectiveDateTime"] = timestamp(age)
    report["issued"] = timestamp(max(60, age - rng.randrange(3600, 2 * DAY)))
    report["performer"] = [ctx.practitioner()]
    report["result"] = [{"reference": f"Observation/{oid}", "display": "Component (1)"} for oid, _ in results]
    return report, age
