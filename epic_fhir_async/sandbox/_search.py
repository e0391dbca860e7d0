"""Search validation and filtering with Epic's per-type rules (docs/epic-notes.md §3.3, §3.4).

:func:`run_search` turns a type and its parameters into the matching ids plus trailing outcome issues, or a
:class:`SearchFailure` (status + OperationOutcome issues) exactly as Epic rejects the search.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from ._http import outcome_issue
from ._search_patient import PATIENT_DEMOGRAPHICS as _PATIENT_DEMOGRAPHICS
from ._search_patient import SearchFailure, SearchResult, fatal, patient_search

__all__ = ["SearchFailure", "SearchResult", "run_search"]

Resources = Mapping[str, Mapping[str, dict[str, Any]]]
ByPatient = Mapping[str, Mapping[str, list[str]]]

#: Parameters every type understands (the paging/format ones never filter).
_COMMON = frozenset({"_id", "_count", "_summary", "_include", "_revinclude", "_format", "_elements"})
_CLINICAL_PARAMS = frozenset(
    {"patient", "subject", "category", "code", "date", "clinical-status", "status", "encounter", "issued",
     "onset-date", "recorded-date", "authoredon", "type", "period", "intent", "identifier", "based-on"}
)  # fmt: skip
#: Types whose search requires a patient (docs/epic-notes.md §3.3); AllergyIntolerance answers 403, not 400.
_PATIENT_REQUIRED = frozenset(
    {"AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "DiagnosticReport", "DocumentReference",
     "Encounter", "EpisodeOfCare", "Goal", "Immunization", "MedicationRequest", "MedicationStatement",
     "Observation", "Procedure", "ServiceRequest", "FamilyMemberHistory", "Coverage", "Device"}
)  # fmt: skip
#: Accepted Observation categories; procedure/therapy/activity error out since June 2025
#: (docs/epic-notes.md §3.3).
_OBS_CATEGORIES = frozenset(
    {"social-history", "vital-signs", "imaging", "laboratory", "survey", "exam", "smartdata",
     "core-characteristics", "functional-mental-status", "genomics", "lda", "obstetrics-gynecology",
     "sdoh", "labor-delivery", "newborn-delivery"}
)  # fmt: skip
_DATE_FIELDS: dict[str, tuple[str, ...]] = {
    "Observation": ("effectiveDateTime", "issued"),
    "Condition": ("onsetDateTime", "recordedDate"),
    "Encounter": ("period.start",),
    "Procedure": ("performedDateTime", "performedPeriod.start"),
    "DiagnosticReport": ("effectiveDateTime", "issued"),
    "DocumentReference": ("date",),
    "MedicationRequest": ("authoredOn",),
    "Immunization": ("occurrenceDateTime",),
    "AllergyIntolerance": ("recordedDate",),
}
_DATE_PARAMS = frozenset({"date", "onset-date", "recorded-date", "authoredon", "period", "issued"})
_PREFIXES = ("eq", "ne", "ge", "le", "gt", "lt", "sa", "eb")


def _known(rtype: str) -> frozenset[str]:
    if rtype == "Patient":
        return _COMMON | _PATIENT_DEMOGRAPHICS | {"identifier"}
    if rtype == "Binary":
        return _COMMON
    return _COMMON | _CLINICAL_PARAMS | {"name", "practitioner", "organization", "member"}


def run_search(
    rtype: str,
    params: Sequence[tuple[str, str]],
    resources: Resources,
    by_patient: ByPatient,
    *,
    allowed: frozenset[str] | None,
    warn_unknown: bool = False,
) -> SearchResult | SearchFailure:
    """Validate and run ``rtype``'s search; ``allowed`` is the client's type list (None = everything)."""
    known = _known(rtype)
    unknown = [name for name, _ in params if name.split(":")[0] not in known]
    values: dict[str, list[str]] = {}
    for name, value in params:
        if rtype == "EpisodeOfCare" and name.startswith("type:"):
            continue  # docs/epic-notes.md §3.3: `type:not` does not satisfy EpisodeOfCare's required type
        if name.split(":")[0] in known:
            values.setdefault(name.split(":")[0], []).append(value)
    result = _search(rtype, values, resources, by_patient, allowed)
    if isinstance(result, SearchFailure):
        # docs/epic-notes.md §3.4: a failing search lists the ignored parameters first, as information issues.
        notes = [
            outcome_issue(
                "information",
                "invalid",
                "59100",
                "Unknown parameter",
                diagnostics=f"Unknown parameter: {name.upper()}. Parameter has been ignored.",
            )
            for name in dict.fromkeys(unknown)
        ]
        result.issues[:0] = notes
    elif warn_unknown and unknown:
        result.issues[:0] = [
            outcome_issue(
                "warning",
                "informational",
                "4122",
                "An unknown query parameter was supplied by the client.",
                location=[f"http.{name}"],
            )
            for name in dict.fromkeys(unknown)
        ]
    return result


def _search(
    rtype: str,
    values: dict[str, list[str]],
    resources: Resources,
    by_patient: ByPatient,
    allowed: frozenset[str] | None,
) -> SearchResult | SearchFailure:
    pool = resources.get(rtype, {})
    if "_id" in values:
        ids = [i for v in values["_id"] for i in v.split(",") if i]
        if ids and not any(i in pool for i in ids) and any(i in r for r in resources.values() for i in ids):
            # docs/epic-notes.md §3.3: an id of another type is an information/not-found 400, not an empty
            # searchset.
            return SearchFailure(
                400,
                [
                    outcome_issue(
                        "information",
                        "not-found",
                        "59008",
                        "The FHIR ID provided was not found.",
                        diagnostics="Invalid FHIR ID provided",
                        location=["/f:_id"],
                        expression=["_id"],
                    )
                ],
            )
    if rtype == "Patient":
        return patient_search(values, pool)
    patient_values = values.get("patient", []) + [
        v for v in values.get("subject", []) if "/" not in v or v.startswith("Patient/")
    ]
    if rtype in _PATIENT_REQUIRED and not patient_values and "_id" not in values:
        if rtype == "AllergyIntolerance":
            # docs/epic-notes.md §3.3: Epic answers 403 with a processing outcome here, not 400.
            return fatal(
                403, "processing", "59159", "Business rule failed.",
                "This resource requires a patient parameter for searching.",
            )  # fmt: skip
        return fatal(
            400, "business-rule", "59159", "Business rule failed.",
            "This resource requires a patient or subject parameter for searching.",
            location=["/f:patient"],
        )  # fmt: skip
    if rtype == "Observation" and "_id" not in values:
        if "category" not in values and "code" not in values:
            return fatal(
                400, "required", "59108", "Required element missing.",
                "Observation searches require a category or code parameter.",
                location=["/f:category"], expression=["category"],
            )  # fmt: skip
        for raw in values.get("category", []):
            for cat in raw.split(","):
                if cat.split("|")[-1].lower() not in _OBS_CATEGORIES:
                    return fatal(
                        400, "value", "59111", "Required element has an invalid value.",
                        f"The category {cat.split('|')[-1]} is not supported.",
                        location=["/f:category"], expression=["category"],
                    )  # fmt: skip
    if rtype == "CarePlan" and "category" not in values:
        return fatal(
            400, "business-rule", "59159", "Business rule failed.",
            "This resource requires a category for searching.",
        )  # fmt: skip
    if rtype == "EpisodeOfCare" and not any("|" in v for v in values.get("type", [])):
        return fatal(
            400, "business-rule", "59159", "Business rule failed.",
            "This resource requires a type (system|code) for searching.",
        )  # fmt: skip
    if not values or set(values) <= {"_count", "_summary", "_format", "_include", "_revinclude", "_elements"}:
        return fatal(
            400, "required", "4110", "Search with no parameters.", "No search parameters were given."
        )
    candidates: list[str]
    if patient_values:
        pids = {v.split("/")[-1] for raw in patient_values for v in raw.split(",")}
        if len(pids) > 1:
            return fatal(
                400, "invalid", "4112", "Invalid parameter combination.", "Only one patient allowed."
            )
        pid = pids.pop()
        if pid not in resources.get("Patient", {}):
            return fatal(
                400, "invalid", "4100", "The resource request contained an invalid parameter.",
                "Invalid patient ID.", location=["/f:patient"],
            )  # fmt: skip
        candidates = list(by_patient.get(rtype, {}).get(pid, []))
    else:
        candidates = list(pool)
    if "_id" in values:
        wanted = {i for v in values["_id"] for i in v.split(",")}
        candidates = [i for i in candidates if i in wanted]
    matchers = _matchers(rtype, values)
    ids = [i for i in candidates if i in pool and all(m(pool[i]) for m in matchers)]
    return _apply_subtypes(rtype, ids, pool, values, allowed)


def _codings(value: Any) -> list[dict[str, Any]]:
    concepts = value if isinstance(value, list) else [value]
    out: list[dict[str, Any]] = []
    for concept in concepts:
        if isinstance(concept, dict):
            out.extend(c for c in concept.get("coding", []) if isinstance(c, dict))
        elif isinstance(concept, str):
            out.append({"code": concept})
    return out


def _token_match(field_value: Any, raw: str) -> bool:
    for token in raw.split(","):
        system, bar, code = token.rpartition("|")
        for coding in _codings(field_value):
            if coding.get("code") == code and (not bar or not system or coding.get("system") == system):
                return True
    return False


def _get(resource: dict[str, Any], path: str) -> Any:
    value: Any = resource
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _date_match(value: str, raw: str) -> bool:
    prefix, target = ("eq", raw)
    if raw[:2] in _PREFIXES and not raw[:2].isdigit():
        prefix, target = raw[:2], raw[2:]
    have = value[: len(target)]
    compare: dict[str, Callable[[], bool]] = {
        "eq": lambda: have == target,
        "ne": lambda: have != target,
        "ge": lambda: have >= target,
        "le": lambda: have <= target,
        "gt": lambda: have > target,
        "sa": lambda: have > target,
        "lt": lambda: have < target,
        "eb": lambda: have < target,
    }
    return compare[prefix]()


def _field_token(resource: dict[str, Any], *, field_name: str, raw: str) -> bool:
    return _token_match(resource.get(field_name, []), raw)


def _status_match(resource: dict[str, Any], *, raw: str) -> bool:
    return resource.get("status") in raw.split(",")


def _matchers(rtype: str, values: dict[str, list[str]]) -> list[Callable[[dict[str, Any]], bool]]:
    out: list[Callable[[dict[str, Any]], bool]] = []
    code_field = {"Immunization": "vaccineCode", "DocumentReference": "type"}.get(rtype, "code")
    for param, field_name in (
        ("category", "category"),
        ("code", code_field),
        ("type", "type"),
        ("clinical-status", "clinicalStatus"),
    ):
        for raw in values.get(param, []):
            out.append(partial(_field_token, field_name=field_name, raw=raw))
    for raw in values.get("status", []):
        out.append(partial(_status_match, raw=raw))
    for name in _DATE_PARAMS:
        # docs/epic-notes.md §3.3: Observation's non-standard `issued` searches the issued instant only.
        fields = ("issued",) if name == "issued" else _DATE_FIELDS.get(rtype, ())
        for raw in values.get(name, []):

            def match(r: dict[str, Any], raw: str = raw, fields: tuple[str, ...] = fields) -> bool:
                stamp = next((v for f in fields if isinstance(v := _get(r, f), str)), None)
                return stamp is not None and _date_match(stamp, raw)

            out.append(match)
    return out


def _apply_subtypes(
    rtype: str,
    ids: list[str],
    pool: Mapping[str, dict[str, Any]],
    values: dict[str, list[str]],
    allowed: frozenset[str] | None,
) -> SearchResult:
    """Drop results of sub-types the client lacks, with Epic's 59204 warning (docs/epic-notes.md §3.6)."""
    if allowed is None or rtype in allowed:
        return SearchResult(ids)
    prefix = f"{rtype}?category="
    granted = {t[len(prefix) :] for t in allowed if t.startswith(prefix)}
    kept: list[str] = []
    denied: dict[str, str] = {}
    for rid in ids:
        cats = _codings(pool[rid].get("category", []))
        if any(c.get("code") in granted for c in cats):
            kept.append(rid)
        else:
            for c in cats:
                denied.setdefault(str(c.get("code")), str(c.get("display") or c.get("code")))
    for raw in values.get("category", []):
        for cat in raw.split(","):
            code = cat.split("|")[-1]
            if code not in granted:
                denied.setdefault(code, code)
    issues = [
        outcome_issue(
            "warning",
            "suppressed",
            "59204",
            "The authenticated client's search request applies to a sub-resource that the client is not "
            "authorized for. Results of this sub-type will not be returned.",
            diagnostics=f"Client not authorized for {rtype} - {display}. "
            "Search results of this type have not been included.",
        )
        for display in denied.values()
    ]
    return SearchResult(kept, issues)
