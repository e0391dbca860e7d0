"""Search validation and filtering with Epic's per-type rules (docs/epic-notes.md §3.3, §3.4, §3.6).

:func:`run_search` turns a type and its parameters into the matching ids plus trailing outcome issues, or a
:class:`SearchFailure` (status + OperationOutcome issues) exactly as Epic rejects the search.

Parameters are sorted three ways. A parameter Epic's CapabilityStatement declares for the type
(:mod:`._search_params`) filters: through :data:`_FILTERS` (a FHIR path per parameter), or, when the
sandbox has no path for it, the search is refused with a ``not-supported`` 400 that names the parameter,
so a test never mistakes an unfiltered answer for a filtered one. Any other parameter is unknown: dropped
without a word when the search succeeds, listed first (59100) when it fails, as at Epic (§3.4). The chained
``patient.identifier`` (and ``subject.identifier``) works as at Epic; ``patient:identifier`` does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from ._data_codes import EPIC_CLASSES, EPIC_ENC_CLASS
from ._http import EPIC_TEXT, outcome_issue
from ._search_params import SEARCH_PARAMS
from ._search_patient import PATIENT_DEMOGRAPHICS as _PATIENT_DEMOGRAPHICS
from ._search_patient import SearchFailure, SearchResult, fatal, identifier_match, patient_search

__all__ = ["SearchFailure", "SearchResult", "run_search"]

Resources = Mapping[str, Mapping[str, dict[str, Any]]]
ByPatient = Mapping[str, Mapping[str, list[str]]]

#: Parameters every type takes besides its declared ones; none of them filters.
_COMMON = frozenset({"_id", "_count", "_summary", "_include", "_revinclude", "_format", "_elements"})
_NOT_FILTERS = _COMMON - {"_id"}
#: Epic's chained patient parameters (docs/epic-notes.md §3.3): ``patient.identifier=system|value``.
_CHAINS = ("patient.identifier", "subject.identifier")
#: Types whose search requires a patient (docs/epic-notes.md §3.3), and the FHIR issue ``code`` of Epic's
#: refusal per type: ``required`` for DocumentReference and Procedure, ``business-rule`` for the others Epic
#: has been seen refusing; AllergyIntolerance answers 403 ``processing`` instead of 400.
_PATIENT_REQUIRED: dict[str, str] = {
    **dict.fromkeys(
        ("CarePlan", "CareTeam", "Condition", "Coverage", "Device", "DiagnosticReport", "Encounter",
         "EpisodeOfCare", "FamilyMemberHistory", "Goal", "Immunization", "MedicationRequest", "Observation",
         "ServiceRequest"),
        "business-rule",
    ),
    "DocumentReference": "required",
    "Procedure": "required",
    "AllergyIntolerance": "processing",
}  # fmt: skip
#: Accepted Observation categories; procedure/therapy/activity error out since June 2025
#: (docs/epic-notes.md §3.3).
_OBS_CATEGORIES = frozenset(
    {"social-history", "vital-signs", "imaging", "laboratory", "survey", "exam", "smartdata",
     "core-characteristics", "functional-mental-status", "genomics", "lda", "obstetrics-gynecology",
     "sdoh", "labor-delivery", "newborn-delivery"}
)  # fmt: skip
_PREFIXES = ("eq", "ne", "ge", "le", "gt", "lt", "sa", "eb")

#: How a declared parameter filters: ``(kind, FHIR paths)``, looked up as ``"Type.param"`` then ``"param"``.
#: Kinds: token (codings, codes, identifiers, plain codes), reference, date (the first stamp found), string
#: (case-insensitive prefix). A declared parameter without a row here is refused (see the module docstring).
_FILTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "category": ("token", ("category",)),
    "code": ("token", ("code",)),
    "status": ("token", ("status",)),
    "clinical-status": ("token", ("clinicalStatus",)),
    "verification-status": ("token", ("verificationStatus",)),
    "intent": ("token", ("intent",)),
    "class": ("token", ("class",)),
    "type": ("token", ("type",)),
    "identifier": ("token", ("identifier",)),
    "criticality": ("token", ("criticality",)),
    "priority": ("token", ("priority",)),
    "encounter": ("reference", ("encounter", "context.encounter")),
    "performer": ("reference", ("performer", "performer.actor")),
    "requester": ("reference", ("requester",)),
    "recorder": ("reference", ("recorder",)),
    "asserter": ("reference", ("asserter",)),
    "author": ("reference", ("author",)),
    "authenticator": ("reference", ("authenticator",)),
    "custodian": ("reference", ("custodian",)),
    "based-on": ("reference", ("basedOn",)),
    "result": ("reference", ("result",)),
    "specimen": ("reference", ("specimen",)),
    "issued": ("date", ("issued",)),
    "onset-date": ("date", ("onsetDateTime",)),
    "recorded-date": ("date", ("recordedDate",)),
    "abatement-date": ("date", ("abatementDateTime",)),
    "authoredon": ("date", ("authoredOn",)),
    "AllergyIntolerance.date": ("date", ("recordedDate",)),
    "Condition.encounter": ("reference", ("encounter",)),
    "DiagnosticReport.date": ("date", ("effectiveDateTime", "issued")),
    "DocumentReference.date": ("date", ("date",)),
    "DocumentReference.period": ("date", ("context.period.start",)),
    "DocumentReference.docstatus": ("token", ("docStatus",)),
    "Encounter.date": ("date", ("period.start",)),
    "Encounter.practitioner": ("reference", ("participant.individual",)),
    "Encounter.participant": ("reference", ("participant.individual",)),
    "Encounter.service-provider": ("reference", ("serviceProvider",)),
    "Immunization.date": ("date", ("occurrenceDateTime",)),
    "Immunization.vaccine-code": ("token", ("vaccineCode",)),
    "Immunization.lot-number": ("string", ("lotNumber",)),
    "MedicationRequest.date": ("date", ("authoredOn",)),
    "MedicationRequest.medication": ("reference", ("medicationReference",)),
    "Observation.date": ("date", ("effectiveDateTime", "issued")),
    "Procedure.date": ("date", ("performedDateTime", "performedPeriod.start")),
    "Patient.active": ("token", ("active",)),
    "Patient.general-practitioner": ("reference", ("generalPractitioner",)),
    "Patient.organization": ("reference", ("managingOrganization",)),
    "Patient.language": ("token", ("communication.language",)),
    "Patient.address-country": ("string", ("address.country",)),
    "Patient.address-use": ("token", ("address.use",)),
    "Patient.death-date": ("date", ("deceasedDateTime",)),
}
#: Epic's "Outside Record" sub-types (records received from other organisations), which the public sandbox's
#: clients are not granted: nearly every clinical searchset there ends with a 59204 warning naming them
#: (docs/epic-notes.md §3.6). Per type, by category where the label depends on it (``None``: no category).
_OUTSIDE_RECORD: dict[str, dict[str | None, tuple[str, ...]]] = {
    "AllergyIntolerance": {None: ("Outside Record",)},
    "Condition": {
        "problem-list-item": ("Outside Record Problems",),
        "encounter-diagnosis": ("Outside Record Encounter Diagnosis",),
        "health-concern": ("Outside Record Problems", "Outside Record Health Concern"),
        None: (
            "Outside Record Problems",
            "Outside Record Encounter Diagnosis",
            "Outside Record Health Concern",
        ),
    },
    "DiagnosticReport": {None: ("Outside Record Results",)},
    "Encounter": {None: ("Outside Record",)},
    "Immunization": {None: ("Outside Record",)},
    "MedicationRequest": {None: ("Outside Record",)},
    "Observation": {
        "laboratory": ("Outside Record Results",),
        "vital-signs": ("Outside Record Vital Signs",),
    },
    "Procedure": {None: ("Outside Record",)},
}
#: The user-level (59205) sub-types the sandbox's background user may not see; Epic adds this one to every
#: Procedure searchset, before the client-level warnings.
_USER_HIDDEN: dict[str, tuple[str, ...]] = {"Procedure": ("External Radiotherapy Summary",)}


def _known(rtype: str) -> frozenset[str]:
    declared = {name for name, _ in SEARCH_PARAMS.get(rtype, ())}
    chains = {c for c in _CHAINS if c.split(".")[0] in declared}
    return frozenset(declared | chains | _COMMON)


def _invalid_value(rtype: str, name: str, value: str) -> bool:
    """A value Epic knows to be wrong for a parameter it declares: ignored, with an information issue."""
    if rtype == "Encounter" and name == "class":
        # Epic's classes are its own numeric codes (docs/epic-notes.md §3.12): HL7's AMB is no class there.
        return not all(
            (not system or system == EPIC_ENC_CLASS) and code in {k for k, _ in EPIC_CLASSES.values()}
            for system, _, code in (token.rpartition("|") for token in value.split(","))
        )
    return False


def run_search(
    rtype: str,
    params: Sequence[tuple[str, str]],
    resources: Resources,
    by_patient: ByPatient,
    *,
    allowed: frozenset[str] | None,
    warn_unknown: bool = False,
    outside_records: bool = True,
) -> SearchResult | SearchFailure:
    """Validate and run ``rtype``'s search; ``allowed`` is the client's type list (None = everything).

    ``outside_records``: add Epic's "Outside Record" 59204 warnings (and Procedure's 59205) to the searchset,
    as Epic's sandbox does for a client without those sub-types.
    """
    known = _known(rtype)
    notes: list[dict[str, Any]] = []  # issues for ignored parameters and values, in query order
    unknown: list[str] = []
    values: dict[str, list[str]] = {}
    for name, value in params:
        base = name.split(":")[0]
        if base not in known:
            if base not in unknown:
                unknown.append(base)
                # docs/epic-notes.md §3.4: a failing search lists the ignored parameters first.
                notes.append(
                    outcome_issue(
                        "information",
                        "invalid",
                        "59100",
                        EPIC_TEXT["59100"],
                        diagnostics=f"Unknown parameter: {base.upper()}. Parameter has been ignored.",
                    )
                )
            continue
        if rtype == "EpisodeOfCare" and name.startswith("type:"):
            continue  # docs/epic-notes.md §3.3: `type:not` does not satisfy EpisodeOfCare's required type
        if _invalid_value(rtype, base, value):
            notes.append(
                outcome_issue(
                    "information",
                    "value",
                    "59109",
                    "An element or header value is invalid.",
                    diagnostics=f"Invalid value for parameter {base.upper()}: {value}. Parameter has been ignored.",
                    location=[f"/f:{base}"],
                )
            )
            continue
        values.setdefault(base, []).append(value)
    result = _search(rtype, values, resources, by_patient, allowed, outside_records)
    if isinstance(result, SearchFailure):
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
            for name in unknown
        ]
    return result


def _patient_required(rtype: str) -> SearchFailure:
    code = _PATIENT_REQUIRED[rtype]
    if code == "processing":
        # docs/epic-notes.md §3.3: Epic answers 403 with a processing outcome here, not 400.
        return fatal(
            403, "processing", "59159", EPIC_TEXT["59159"],
            "This resource requires a patient parameter for searching.",
        )  # fmt: skip
    if code == "required":
        return fatal(
            400, "required", "59108", "Required element missing.",
            "This resource requires a patient or subject parameter for searching.", location=["/f:patient"],
        )  # fmt: skip
    return fatal(
        400, "business-rule", "59159", EPIC_TEXT["59159"],
        "This resource requires a patient or subject parameter for searching.", location=["/f:patient"],
    )  # fmt: skip


def _search(
    rtype: str,
    values: dict[str, list[str]],
    resources: Resources,
    by_patient: ByPatient,
    allowed: frozenset[str] | None,
    outside_records: bool,
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
                        EPIC_TEXT["59008"],
                        diagnostics="Invalid FHIR ID provided",
                        location=["/f:_id"],
                    )
                ],
            )
    if rtype == "Patient":
        found = patient_search(values, pool)
        if isinstance(found, SearchFailure):
            return found
        extra = {k: v for k, v in values.items() if k not in _PATIENT_DEMOGRAPHICS | {"identifier"}}
        refused = _unsupported(rtype, extra)
        if refused is not None:
            return refused
        matchers = _matchers(rtype, extra)
        return SearchResult([i for i in found.ids if all(m(pool[i]) for m in matchers)])
    chained = [v for name in _CHAINS for v in values.pop(name, [])]
    patient_values = values.get("patient", []) + [
        v for v in values.get("subject", []) if "/" not in v or v.startswith("Patient/")
    ]
    if rtype in _PATIENT_REQUIRED and not patient_values and not chained and "_id" not in values:
        return _patient_required(rtype)
    if rtype == "Observation" and "_id" not in values:
        if "category" not in values and "code" not in values:
            return fatal(
                400, "required", "59108", "Required element missing.",
                "Observation searches require a category or code parameter.", location=["/f:category"],
            )  # fmt: skip
        for raw in values.get("category", []):
            for cat in raw.split(","):
                if cat.split("|")[-1].lower() not in _OBS_CATEGORIES:
                    return fatal(
                        400, "value", "59111", "Required element has an invalid value.",
                        f"The category {cat.split('|')[-1]} is not supported.", location=["/f:category"],
                    )  # fmt: skip
    if rtype == "CarePlan" and "category" not in values:
        return fatal(
            400, "business-rule", "59159", EPIC_TEXT["59159"],
            "This resource requires a category for searching.",
        )  # fmt: skip
    if rtype == "EpisodeOfCare" and not any("|" in v for v in values.get("type", [])):
        return fatal(
            400, "business-rule", "59159", EPIC_TEXT["59159"],
            "This resource requires a type (system|code) for searching.",
        )  # fmt: skip
    if not chained and (not values or set(values) <= _NOT_FILTERS):
        return fatal(
            400, "required", "4110", "Search with no parameters.", "No search parameters were given."
        )
    refused = _unsupported(rtype, values)
    if refused is not None:
        return refused
    pids: set[str] = {v.split("/")[-1] for raw in patient_values for v in raw.split(",")}
    if chained:
        patients = resources.get("Patient", {})
        matched = {p for p, patient in patients.items() if all(identifier_match(patient, v) for v in chained)}
        pids = pids & matched if pids else matched
        if not pids:
            return _finish(rtype, [], pool, values, allowed, outside_records)
    candidates: list[str]
    if pids:
        if len(pids) > 1:
            return fatal(
                400, "invalid", "4112", "Invalid parameter combination.", "Only one patient allowed."
            )
        pid = next(iter(pids))
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
    return _finish(rtype, ids, pool, values, allowed, outside_records)


def _filter_spec(rtype: str, name: str) -> tuple[str, tuple[str, ...]] | None:
    return _FILTERS.get(f"{rtype}.{name}") or _FILTERS.get(name)


def _unsupported(rtype: str, values: Mapping[str, list[str]]) -> SearchFailure | None:
    """A declared parameter the sandbox cannot evaluate: refused, never silently left out."""
    for name in values:
        if name in _COMMON or name in ("patient", "subject") or _filter_spec(rtype, name) is not None:
            continue
        return fatal(
            400, "not-supported", "4100", "The resource request contained an invalid parameter.",
            f"The sandbox does not emulate the {name} parameter of {rtype} searches (Epic filters by it).",
            location=[f"/f:{name}"],
        )  # fmt: skip
    return None


def _codings(value: Any) -> list[dict[str, Any]]:
    """The codes a token parameter can match in ``value``: codings, a Coding, identifiers, plain codes."""
    out: list[dict[str, Any]] = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            if "coding" in item:
                out.extend(c for c in item["coding"] if isinstance(c, dict))
            elif "code" in item:
                out.append(item)
            elif "value" in item:  # an Identifier
                out.append({"system": item.get("system"), "code": str(item["value"]).strip()})
        elif isinstance(item, bool):
            out.append({"code": "true" if item else "false"})
        elif isinstance(item, str):
            out.append({"code": item})
    return out


def _token_match(field_value: Any, raw: str) -> bool:
    for token in raw.split(","):
        system, bar, code = token.rpartition("|")
        for coding in _codings(field_value):
            if coding.get("code") == code and (not bar or not system or coding.get("system") == system):
                return True
    return False


def _get(resource: dict[str, Any], path: str) -> list[Any]:
    """Every value at a dotted path, lists flattened (``participant.individual`` of each participant)."""
    found: list[Any] = [resource]
    for part in path.split("."):
        step: list[Any] = []
        for item in found:
            value = item.get(part) if isinstance(item, dict) else None
            if isinstance(value, list):
                step.extend(value)
            elif value is not None:
                step.append(value)
        found = step
    return found


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


def _references(values: Iterable[Any]) -> list[str]:
    return [str(v["reference"]) for v in values if isinstance(v, dict) and "reference" in v]


def _matches(resource: dict[str, Any], *, kind: str, paths: tuple[str, ...], raw: str) -> bool:
    found = [v for path in paths for v in _get(resource, path)]
    if kind == "token":
        return _token_match(found, raw)
    if kind == "reference":
        refs = _references(found)
        for wanted in raw.split(","):
            rtype, _, rid = wanted.rstrip("/").rpartition("/")
            rtype = rtype.rsplit("/", 1)[-1]
            if any(r.split("/")[-1] == rid and (not rtype or r.split("/")[-2:-1] == [rtype]) for r in refs):
                return True
        return False
    if kind == "string":
        return any(str(v).lower().startswith(w.lower()) for v in found for w in raw.split(","))
    stamp = next((v for v in found if isinstance(v, str)), None)
    return stamp is not None and _date_match(stamp, raw)


def _matchers(rtype: str, values: dict[str, list[str]]) -> list[Callable[[dict[str, Any]], bool]]:
    out: list[Callable[[dict[str, Any]], bool]] = []
    for name, raws in values.items():
        spec = _filter_spec(rtype, name)
        if spec is None or name in ("patient", "subject", "_id"):
            continue
        kind, paths = spec
        out.extend(partial(_matches, kind=kind, paths=paths, raw=raw) for raw in raws)
    return out


def _finish(
    rtype: str,
    ids: list[str],
    pool: Mapping[str, dict[str, Any]],
    values: dict[str, list[str]],
    allowed: frozenset[str] | None,
    outside_records: bool,
) -> SearchResult:
    result = _apply_subtypes(rtype, ids, pool, values, allowed)
    if outside_records:
        result.issues[:0] = _outside_record_issues(rtype, values)
    return result


def _subtype_issue(code: str, who: str, rtype: str, label: str) -> dict[str, Any]:
    return outcome_issue(
        "warning",
        "suppressed",
        code,
        EPIC_TEXT[code],
        diagnostics=f"{who} not authorized for {rtype} - {label}. Search results of this type have not been "
        "included.",
    )


def _outside_record_issues(rtype: str, values: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """Epic's warnings for the sub-types a sandbox client lacks (docs/epic-notes.md §3.6)."""
    labels = _OUTSIDE_RECORD.get(rtype, {})
    categories: list[str | None] = [
        c.split("|")[-1] for raw in values.get("category", []) for c in raw.split(",")
    ]
    chosen: dict[str, None] = {}  # ordered, without repeats
    for category in categories or [None]:
        chosen.update(dict.fromkeys(labels.get(category, labels.get(None, ()))))
    issues = [_subtype_issue("59205", "User", rtype, label) for label in _USER_HIDDEN.get(rtype, ())]
    return issues + [_subtype_issue("59204", "Client", rtype, label) for label in chosen]


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
    return SearchResult(kept, [_subtype_issue("59204", "Client", rtype, d) for d in denied.values()])
