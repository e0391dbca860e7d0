"""Patients, Practitioners and the Organization of the sandbox dataset.

Epic's own sandbox test patients keep their real R4 FHIR ids, names, birth dates and identifiers
(docs/epic-notes.md §6); the per-type counts in :data:`NAMED_PATIENTS` reproduce the sandbox sweep's data
highlights (Derrick Lin gets more than 1000 vital signs so Epic's default 1000-entry page splits, §3.5).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from . import _data_codes as c
from ._data_ids import DAY, date, short_id


@dataclass(frozen=True)
class NamedPatient:
    """One of Epic's sandbox patients: real id and demographics, and how much data of each kind it has."""

    id: str
    given: tuple[str, ...]
    family: str
    birth_date: str
    gender: str
    ids: dict[str, str] = field(default_factory=dict)  # identifier type text -> value (CEID, EPIC, EPI, ...)
    counts: dict[str, int] = field(default_factory=dict)  # data kind -> count (see _data.KINDS)
    sample_ids: dict[str, str] = field(
        default_factory=dict
    )  # kind -> a real Epic id to use for the first one


NAMED_PATIENTS: tuple[NamedPatient, ...] = (
    NamedPatient(
        "erXuFYUfucBZaryVksYEcMg3", ("Camila", "Maria"), "Lopez", "1987-09-12", "female",
        {"CEID": "FHRLBVD2TLZS69Z", "EPIC": "E4007", "EPI": "203713", "MYCHARTLOGIN": "FHIRCAMILA",
         "DSTU2": "TnOZ.elPXC6zcBNFMcFA7A5KZbYxo2.4T-LylRk4GoW4B"},
        {"laboratory": 5, "vital-signs": 245, "social-history": 1, "encounters": 10, "documents": 70,
         "reports": 4, "procedures": 2, "problem-list-item": 3, "encounter-diagnosis": 4, "medications": 4,
         "allergies": 2, "immunizations": 4},
        {"laboratory": "faSpwWfVCMbN46Z9NPBBlfcprMmq.3qSsXKb23FkXdcw4", "documents": "eaibpvCkNL9BzrSwueTYNQg3"},
    ),
    NamedPatient(
        "eq081-VQEgP8drUUqCWzHfw3", ("Derrick",), "Lin", "1973-06-03", "male",
        {"CEID": "FHRRJKD4PWK969G", "EPIC": "E4005", "EPI": "203711", "MYCHARTLOGIN": "FHIRDERRICK"},
        {"vital-signs": 1150, "encounters": 8, "documents": 20, "problem-list-item": 2, "encounter-diagnosis": 3,
         "medications": 3, "allergies": 1, "immunizations": 2, "social-history": 1},
        {"vital-signs": "fCqAp03-rbhTJqy7SRE4-5yNI5Q2dFc4k6qtuWiD86yo4", "encounters": "e6kBx6PwnxIv.5kCifScsWg3",
         "allergies": "faxCFgUT0.mZ4.FQGbwua44etJ.62EF0jdu0p1ITjGpU4"},
    ),
    NamedPatient(
        "eD.LxhDyX35TntF77l7etUA3", ("Jason",), "Argonaut", "1985-08-01", "male",
        {"EPIC": "E3967", "EPI": "203675", "MYCHARTLOGIN": "FHIRJASON",
         "DSTU2": "Tzq4j8Zz14GtEj1vkMR1DfKeTpXPttd5-8DvjtsLBdJsB"},
        {"allergies": 3, "problem-list-item": 7, "medications": 9, "encounters": 3, "encounter-diagnosis": 2,
         "immunizations": 2},
    ),
    NamedPatient(
        "evYS76EX6LLeCX2PlRLhvwg3", ("Jessica",), "Argonaut", "1983-02-14", "female", {},
        {"problem-list-item": 4, "medications": 5, "encounters": 2},
    ),
    NamedPatient(
        "eAB3mDIBBcyUKviyzrxsnAw3", ("Desiree", "Caroline"), "Powell", "1978-11-05", "female",
        {"MYCHARTLOGIN": "FHIRDESIREE"},
        {"vital-signs": 388, "immunizations": 7, "encounters": 6, "medications": 3, "problem-list-item": 2},
    ),
    NamedPatient(
        "eIXesllypH3M9tAA5WdJftQ3", ("Linda", "Jane"), "Ross", "1969-04-22", "female", {},
        {"vital-signs": 9, "encounters": 2, "problem-list-item": 2},
    ),
    NamedPatient(
        "e0w0LEDCYtfckT6N.CkJKCw3", ("Warren", "James"), "McGinnis", "1958-07-30", "male", {},
        {"laboratory": 1, "vital-signs": 76, "documents": 18, "encounters": 5, "reports": 1, "procedures": 1,
         "allergies": 1, "problem-list-item": 3},
    ),
    NamedPatient(
        "egqBHVfQlt4Bw3XGXoxVxHg3", ("Elijah",), "Davis", "1992-03-09", "male", {},
        {"allergies": 2},
    ),
)  # fmt: skip

# Doc-example practitioner ids (docs/epic-notes.md §6) plus the "User Interconnect" seen on sandbox vitals.
NAMED_PRACTITIONERS: tuple[tuple[str, str, str], ...] = (
    ("exfo6E4EXjWsnhA1OGVElgw3", "Physician", "Family Medicine"),
    ("eUXiD4IyBLJFoR2VHOjfTdg3", "Nurse", "Internal Medicine"),
    ("evNp-KhYwOOqAZn1pZ2enuA3", "Interconnect", "User"),
)
ORGANIZATION_ID = "enRyWnSP963FYDpoks4NHOA3"
_ID_SYSTEMS = {
    "CEID": c.ID_CEID,
    "EPIC": c.ID_EPIC_MRN,
    "EPI": c.ID_EPI,
    "MYCHARTLOGIN": c.ID_MYCHART,
}


def patient_resource(
    patient_id: str,
    given: tuple[str, ...],
    family: str,
    birth_date: str,
    gender: str,
    ids: dict[str, str],
    rng: random.Random,
) -> dict[str, Any]:
    """A Patient with Epic's identifier set and legal-sex extension (docs/epic-notes.md §3.12)."""
    identifiers: list[dict[str, Any]] = []
    for kind in ("CEID", "EPIC", "EPI", "MYCHARTLOGIN"):
        if kind in ids:
            identifiers.append(
                {"use": "usual", "type": {"text": kind}, "system": _ID_SYSTEMS[kind], "value": ids[kind]}
            )
    # INTERNAL ids are right-aligned, padded with spaces, as Epic sends them.
    internal = ids.get("INTERNAL") or f"Z{rng.randrange(1000, 99999)}"
    identifiers.append(
        {"use": "usual", "type": {"text": "INTERNAL"}, "system": c.ID_INTERNAL, "value": internal.rjust(10)}
    )
    if "DSTU2" in ids:
        identifiers.append({"use": "usual", "system": c.ID_DSTU2, "value": ids["DSTU2"]})
    identifiers.append({"use": "usual", "system": c.ID_STU3, "value": patient_id})
    text = " ".join((*given, family))
    street = f"{rng.randrange(100, 9999)} {c.STREETS[rng.randrange(len(c.STREETS))]}"
    city, state, postal = c.CITIES[rng.randrange(len(c.CITIES))]
    legal = "female" if gender == "female" else "male"
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "extension": [
            {
                "valueCodeableConcept": {"coding": [c.coding(c.EPIC_LEGAL_SEX, legal, legal.title())]},
                "url": c.EXT_LEGAL_SEX,
            }
        ],
        "identifier": identifiers,
        "active": True,
        "name": [
            {"use": "official", "text": text, "family": family, "given": list(given)},
            {"use": "usual", "text": f"{given[0]} {family}", "family": family, "given": [given[0]]},
        ],
        "telecom": [
            {"system": "phone", "value": f"608-555-{rng.randrange(1000, 9999)}", "use": "home"},
            {"system": "email", "value": f"{given[0].lower()}.{family.lower()}@example.com", "rank": 1},
        ],
        "gender": gender,
        "birthDate": birth_date,
        "address": [
            {
                "use": "home",
                "line": [street],
                "city": city,
                "district": "DANE",
                "state": state,
                "postalCode": postal,
                "country": "US",
                "period": {"start": "2019-05-24"},
            }
        ],
        "maritalStatus": {"text": "Single"},
        "communication": [
            {
                "language": {"coding": [c.coding("urn:ietf:bcp:47", "en", "English")], "text": "English"},
                "preferred": True,
            }
        ],
        "generalPractitioner": [
            {"reference": "Practitioner/exfo6E4EXjWsnhA1OGVElgw3", "display": "Physician Family Medicine"}
        ],
        "managingOrganization": {
            "reference": f"Organization/{ORGANIZATION_ID}",
            "display": "Epic Hospital System",
        },
    }


def generated_patient(index: int, rng: random.Random) -> tuple[dict[str, Any], str]:
    """The ``index``-th generated Patient (seeded demographics) and its "Family, Given" display."""
    gender = "female" if rng.random() < 0.5 else "male"
    names = c.GIVEN_FEMALE if gender == "female" else c.GIVEN_MALE
    given = (names[rng.randrange(len(names))], names[rng.randrange(len(names))])
    family = c.FAMILY_NAMES[rng.randrange(len(c.FAMILY_NAMES))]
    age_days = rng.randrange(1 * 365, 95 * 365)
    birth = date(age_days * DAY)
    ids = {"CEID": f"FHR{rng.randrange(16**11):011X}", "EPIC": f"E{5000 + index}", "EPI": str(300000 + index)}
    pid = short_id(rng)
    return patient_resource(pid, given, family, birth, gender, ids, rng), f"{family}, {given[0]} {given[1]}"


def practitioner_resource(pid: str, family: str, given: str) -> dict[str, Any]:
    """A Practitioner (Epic sends names and an external id, no meta)."""
    return {
        "resourceType": "Practitioner",
        "id": pid,
        "identifier": [
            {
                "use": "usual",
                "type": {"text": "EXTERNAL"},
                "system": f"{c.EPIC}.2.697780",
                "value": pid[1:9].upper(),
            }
        ],
        "active": True,
        "name": [{"use": "usual", "text": f"{given} {family}", "family": family, "given": [given]}],
        "gender": "unknown",
    }


def organization_resource() -> dict[str, Any]:
    """The sandbox's single Organization (custodian and service provider of everything)."""
    return {
        "resourceType": "Organization",
        "id": ORGANIZATION_ID,
        "identifier": [{"use": "usual", "system": f"{c.EPIC}.2.696570", "value": "1"}],
        "active": True,
        "type": [
            {
                "coding": [
                    c.coding(
                        "http://terminology.hl7.org/CodeSystem/organization-type",
                        "prov",
                        "Healthcare Provider",
                    )
                ]
            }
        ],
        "name": "Epic Hospital System",
        "address": [
            {
                "line": ["1979 Milky Way"],
                "city": "Verona",
                "state": "WI",
                "postalCode": "53593",
                "country": "US",
            }
        ],
    }


def generated_practitioners(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """``n`` generated (id, family, given) practitioner triples."""
    out = []
    for _ in range(n):
        family = c.FAMILY_NAMES[rng.randrange(len(c.FAMILY_NAMES))]
        given = (c.GIVEN_FEMALE + c.GIVEN_MALE)[rng.randrange(len(c.GIVEN_FEMALE) * 2)]
        out.append((short_id(rng), family, given))
    return out
