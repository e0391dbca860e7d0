"""Epic's documented and observed search requirements, in one place (docs/epic-notes.md §3.3).

Two users: :meth:`SearchQuery` checks a search against them before it is sent (``client.search(...)``; off
with ``EpicFHIRClient(..., epic_rules=False)`` or ``query.with_epic_rules(False)`` for other servers), and the
pull's :class:`~epic_fhir_async.pull.EpicExpansion` builds searches that meet them. A search Epic is known to
refuse (a 400 or a 403) or to answer with nothing (a Patient search on one weak demographic) would cost a
request and, in a pull, one failed stream per patient; it raises :class:`ConfigurationError` instead, naming
the rule and what to add. Messages name parameters, never their values (which identify patients).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import ConfigurationError

__all__ = [
    "DEFAULT_CAREPLAN_CATEGORIES",
    "OBSERVATION_CATEGORIES",
    "PATIENT_REQUIRED",
    "REJECTED_OBSERVATION_CATEGORIES",
    "check_search",
]

#: Categories Epic accepts for Observation search (docs/epic-notes.md §3.3); the first three are the pull's
#: default expansion.
OBSERVATION_CATEGORIES = ("vital-signs", "laboratory", "social-history", "exam", "survey", "imaging")
#: Categories that make Epic's Observation search fail since June 2025 (docs/epic-notes.md §3.3).
REJECTED_OBSERVATION_CATEGORIES = frozenset({"procedure", "therapy", "activity"})
#: SNOMED CarePlan categories listed in Epic's CarePlan diagnostics (docs/epic-notes.md §3.3, unverified):
#: longitudinal, encounter.
DEFAULT_CAREPLAN_CATEGORIES = ("38717003", "734163000")
#: Types Epic refuses to search without a patient (docs/epic-notes.md §3.3): 400, and a 403 for
#: AllergyIntolerance.
PATIENT_REQUIRED = frozenset(
    {"AllergyIntolerance", "CarePlan", "Condition", "DiagnosticReport", "DocumentReference", "Encounter",
     "EpisodeOfCare", "Immunization", "MedicationRequest", "Observation", "Procedure"}
)  # fmt: skip
#: What names the patient of a search: the parameter, Epic's chained identifier (docs/epic-notes.md §3.3),
#: or ``_id`` (a search for known resources).
_PATIENT_GIVEN = frozenset({"patient", "subject", "patient.identifier", "subject.identifier", "_id"})
#: Patient's demographic parameters (docs/epic-notes.md §3.3); Epic finds nobody on one of the weak ones alone.
_DEMOGRAPHICS = frozenset(
    {"family", "given", "name", "birthdate", "gender", "legal-sex", "address", "address-city",
     "address-postalcode", "address-state", "telecom", "phone", "email", "own-name", "own-prefix"}
)  # fmt: skip
_WEAK_ALONE = frozenset({"family", "given", "name", "birthdate", "gender", "legal-sex"})
_HOW_TO_DISABLE = (
    "for a server that is not Epic: EpicFHIRClient(..., epic_rules=False) or query.with_epic_rules(False)"
)


def _values(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [str(v) for v in items]


def _refuse(resource_type: str, rule: str) -> ConfigurationError:
    return ConfigurationError(
        f"Epic refuses this {resource_type} search: {rule} (docs/epic-notes.md §3.3; {_HOW_TO_DISABLE})"
    )


def check_search(resource_type: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` when Epic is known to refuse (or empty) this search.

    ``params`` as given to ``client.search`` (values may be lists); names may carry a modifier
    (``type:not``) or a chain (``patient.identifier``).
    """
    names = {name.split(":")[0] for name in params}
    if resource_type == "Patient":
        _check_patient(params, names)
        return
    if resource_type in PATIENT_REQUIRED and not names & _PATIENT_GIVEN:
        status = "403" if resource_type == "AllergyIntolerance" else "400"
        raise _refuse(
            resource_type,
            f"it needs patient= (or subject=, patient.identifier=); without it Epic answers {status}",
        )
    if "_id" in names:
        return
    if resource_type == "Observation":
        if not names & {"category", "code"}:
            raise _refuse(
                "Observation",
                "it needs category= or code= besides the patient (400, code 59108); pull() expands a bare "
                "Observation into one search per category",
            )
        categories = {
            c.rpartition("|")[2].strip().lower()
            for name, value in params.items()
            if name.split(":")[0] == "category"
            for v in _values(value)
            for c in v.split(",")
        }
        bad = sorted(categories & REJECTED_OBSERVATION_CATEGORIES)
        if bad:
            raise _refuse(
                "Observation",
                f"category {', '.join(bad)} fails since June 2025; use some of {', '.join(OBSERVATION_CATEGORIES)}",
            )
    if resource_type == "CarePlan" and "category" not in names:
        raise _refuse("CarePlan", "it needs category= (e.g. 38717003 longitudinal, 734163000 encounter)")
    if resource_type == "EpisodeOfCare":
        types = [v for name, value in params.items() if name == "type" for v in _values(value)]
        if not any("|" in v for v in types):
            raise _refuse(
                "EpisodeOfCare", "it needs type=system|code (a modifier such as type:not does not count)"
            )


def _check_patient(params: Mapping[str, Any], names: set[str]) -> None:
    if "patient" in names:
        raise _refuse("Patient", "patient= means nothing to a Patient search; read the patient, or use _id=")
    births = [
        v for name, value in params.items() if name.split(":")[0] == "birthdate" for v in _values(value)
    ]
    if len(births) > 1 or any(b[:2].isalpha() and b[:2] != "eq" for b in births):
        raise _refuse("Patient", "birthdate must be one date (no range or ge/le prefix)")
    if names & {"_id", "identifier"}:
        return
    demographics = names & _DEMOGRAPHICS
    if not demographics:
        raise _refuse(
            "Patient",
            "it needs _id=, identifier= or demographics such as family= with birthdate= (400, code 59159)",
        )
    if len(demographics) == 1 and demographics <= _WEAK_ALONE:
        raise _refuse(
            "Patient",
            f"{next(iter(demographics))}= alone finds nobody (Epic answers an empty result); add another "
            "demographic (family= with given= or birthdate=) or search by identifier=",
        )
