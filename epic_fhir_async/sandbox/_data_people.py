"""Patients, Practitioners and the Organization of the sandbox dataset.

Epic's own sandbox test patients keep their real R4 FHIR ids, names, birth dates and identifiers
(docs/epic-notes.md §6); the per-type counts in :data:`NAMED_PATIENTS` reproduce the sandbox sweep's data
highlights (Derrick Lin gets more than 1000 vital signs so Epic's default 1000-entry page splits, §3.5).
"""

from __future__ import annotations

import base64
import hashlib
import random
import zlib
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


#: (OMB race code, display, text) choices; the patient id picks one, never the dataset's random stream.
_RACES = (
    ("2106-3", "White", "White"),
    ("2054-5", "Black or African American", "Black"),
    ("2028-9", "Asian", "Chinese"),
    ("1002-5", "American Indian or Alaska Native", "American Indian"),
)
_SNOMED_SEX = {"female": "248152002", "male": "248153007"}
_PRONOUNS = {
    "female": ("LA29519-8", "she/her/her/hers/herself"),
    "male": ("LA29518-0", "he/him/his/his/himself"),
}


def _pick(patient_id: str, salt: str, n: int) -> int:
    """A stable choice among ``n`` for this patient: extra detail must not draw on the seeded random stream,
    or every resource generated after the patients would change."""
    return zlib.crc32(f"{salt}:{patient_id}".encode()) % n


def dstu2_id(patient_id: str) -> str:
    """A stable DSTU2-style FHIR id (``T`` + 43 chars + ``B``) derived from the R4 id, for patients whose real
    one Epic's captures do not give (the Patient's ``FHIR`` identifier and ``__epic.dstu2.patient``)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(patient_id.encode()).digest()).decode("ascii")
    return "T" + digest[:43].replace("_", ".") + "B"


def _patient_extensions(patient_id: str, gender: str) -> list[dict[str, Any]]:
    """Epic's Patient extensions: legal sex and sex for clinical use in Epic's system, US Core race,
    ethnicity and sex, and the calculated pronouns (docs/epic-notes.md §3.12)."""
    legal = "female" if gender == "female" else "male"
    sex = c.coding(c.EPIC_LEGAL_SEX, legal, legal)
    race, race_display, race_text = _RACES[_pick(patient_id, "race", len(_RACES))]
    pronoun_code, pronoun_text = _PRONOUNS[legal]
    return [
        {"valueCodeableConcept": {"coding": [sex], "text": legal.title()}, "url": c.EXT_LEGAL_SEX},
        {"valueCodeableConcept": {"coding": [sex]}, "url": c.EXT_SEX_FOR_CLINICAL_USE},
        {
            "extension": [
                {"valueCoding": c.coding(c.OMB_RACE, race, race_display), "url": "ombCategory"},
                {"valueString": race_text, "url": "text"},
            ],
            "url": c.EXT_US_CORE_RACE,
        },
        {"extension": [{"valueString": "Unknown", "url": "text"}], "url": c.EXT_US_CORE_ETHNICITY},
        {"valueCode": _SNOMED_SEX[legal], "url": c.EXT_US_CORE_SEX},
        {
            "valueCodeableConcept": {"coding": [c.coding(c.LOINC, pronoun_code, pronoun_text)]},
            "url": c.EXT_PRONOUNS,
        },
    ]


def _patient_identifiers(patient_id: str, ids: dict[str, str], internal: str) -> list[dict[str, Any]]:
    """Epic's identifier set in Epic's order: CEID, EPIC (MRN), EXTERNAL, FHIR (DSTU2), FHIR STU3, INTERNAL,
    EPI, MYCHARTLOGIN, WPRINTERNAL (docs/epic-notes.md §3.12)."""

    def ident(kind: str, system: str, value: str, coding: dict[str, Any] | None = None) -> dict[str, Any]:
        kind_type: dict[str, Any] = {"coding": [coding], "text": kind} if coding else {"text": kind}
        return {"use": "usual", "type": kind_type, "system": system, "value": value}

    out: list[dict[str, Any]] = []
    if "CEID" in ids:
        out.append(ident("CEID", c.ID_CEID, ids["CEID"]))
    if "EPIC" in ids:
        out.append(ident("EPIC", c.ID_EPIC_MRN, ids["EPIC"]))
    # EXTERNAL is the INTERNAL id without its padding, typed as CARIN's "um" (unique member id).
    out.append(ident("EXTERNAL", c.ID_INTERNAL, internal, c.coding(c.C4BB_IDENTIFIER_TYPE, "um")))
    out.append(ident("FHIR", c.ID_DSTU2, ids.get("DSTU2") or dstu2_id(patient_id)))
    out.append(ident("FHIR STU3", c.ID_STU3, patient_id))
    # INTERNAL ids are right-aligned, padded with spaces, as Epic sends them.
    out.append(ident("INTERNAL", c.ID_INTERNAL, internal.rjust(10)))
    if "EPI" in ids:
        out.append(ident("EPI", c.ID_EPI, ids["EPI"]))
    if "MYCHARTLOGIN" in ids:
        out.append(ident("MYCHARTLOGIN", c.ID_MYCHART, ids["MYCHARTLOGIN"]))
    out.append(ident("WPRINTERNAL", c.ID_WPR_INTERNAL, str(100 + _pick(patient_id, "wpr", 9000))))
    return out


def patient_resource(
    patient_id: str,
    given: tuple[str, ...],
    family: str,
    birth_date: str,
    gender: str,
    ids: dict[str, str],
    rng: random.Random,
) -> dict[str, Any]:
    """A Patient shaped like Epic's: its extensions, identifier set, ranked telecom, ``deceasedBoolean`` and
    address text (docs/epic-notes.md §3.12)."""
    internal = ids.get("INTERNAL") or f"Z{rng.randrange(1000, 99999)}"
    text = " ".join((*given, family))
    street = f"{rng.randrange(100, 9999)} {c.STREETS[rng.randrange(len(c.STREETS))]}"
    city, state, postal = c.CITIES[rng.randrange(len(c.CITIES))]
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "extension": _patient_extensions(patient_id, gender),
        "identifier": _patient_identifiers(patient_id, ids, internal),
        "active": True,
        "name": [
            {"use": "official", "text": text, "family": family, "given": list(given)},
            {"use": "usual", "text": f"{given[0]} {family}", "family": family, "given": [given[0]]},
        ],
        "telecom": [
            {"system": "phone", "value": f"608-555-{rng.randrange(1000, 9999)}", "use": "home", "rank": 2},
            {"system": "email", "value": f"{given[0].lower()}.{family.lower()}@example.com", "rank": 1},
        ],
        "gender": gender,
        "birthDate": birth_date,
        "deceasedBoolean": False,
        "address": [
            {
                "use": "home",
                "text": f"{street}\r\n{city.upper()} {state} {postal}\r\nUnited States of America",
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
                "extension": [_PROFICIENCY],
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


_PROFICIENCY = {
    "extension": [
        {
            "valueCoding": c.coding(
                "http://terminology.hl7.org/CodeSystem/v3-LanguageAbilityMode", "ESP", "Expressed spoken"
            ),
            "url": "type",
        }
    ],
    "url": "http://hl7.org/fhir/StructureDefinition/patient-proficiency",
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
