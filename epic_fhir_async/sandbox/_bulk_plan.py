"""What a sandbox bulk export contains: types, filters, Group members, files and error-file lines.

Pure planning, no I/O: :func:`parse_kickoff_params` reads ``_type`` / ``_typeFilter`` / ``_since`` /
``_outputFormat`` as Epic does (docs/epic-notes.md §4.1), and :func:`plan_export` turns the Group's patients
into output files of at most ``resources_per_file`` resources and an error file of OperationOutcome lines
(4101 for a requested type without data, 59204 for a type the client may not read). The bytes are made in
:mod:`._bulk_files`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ._http import EPIC_TEXT, outcome, outcome_issue

__all__ = [
    "NDJSON",
    "PATIENT_COMPARTMENT_TYPES",
    "BulkFile",
    "DatasetLike",
    "FilterError",
    "ResourceFilter",
    "epic_issue",
    "group_members",
    "parse_kickoff_params",
    "parse_type_filter",
    "plan_export",
]

NDJSON = "application/fhir+ndjson"

# Displays for the codes the bulk server uses: Epic's recorded ones (docs/epic-notes.md §3.8), ours for the rest.
_DISPLAY = {
    **EPIC_TEXT,
    "4100": "The resource request contained an invalid parameter.",
    "4118": "User not authorized for request.",
}


def epic_issue(severity: str, code: str, epic_code: str, diagnostics: str, **extra: Any) -> dict[str, Any]:
    """An OperationOutcome issue with Epic's coding and display for ``epic_code``."""
    return outcome_issue(severity, code, epic_code, _DISPLAY[epic_code], diagnostics=diagnostics, **extra)


#: FHIR R4 patient-compartment types: the types a Group-level export may be asked for. A type in this set that
#: the dataset lacks exports nothing and gets an informational 4101 line in the error file instead.
_COMPARTMENT_TEXT = """
Account AdverseEvent AllergyIntolerance Appointment AppointmentResponse AuditEvent Basic BodyStructure
CarePlan CareTeam ChargeItem Claim ClaimResponse ClinicalImpression Communication CommunicationRequest
Composition Condition Consent Coverage CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue
DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference Encounter
EnrollmentRequest EpisodeOfCare ExplanationOfBenefit FamilyMemberHistory Flag Goal ImagingStudy Immunization
ImmunizationEvaluation ImmunizationRecommendation Invoice List MeasureReport Media MedicationAdministration
MedicationDispense MedicationRequest MedicationStatement MolecularSequence NutritionOrder Observation
Patient Person Procedure Provenance QuestionnaireResponse RelatedPerson RequestGroup ResearchSubject
RiskAssessment ServiceRequest Specimen SupplyDelivery SupplyRequest VisionPrescription
"""
PATIENT_COMPARTMENT_TYPES = frozenset(_COMPARTMENT_TEXT.split())

# Search parameter -> resource element, for the token-style `_typeFilter` / sub-type matching we support.
_FILTER_ELEMENTS = {
    "category": "category",
    "code": "code",
    "status": "status",
    "clinical-status": "clinicalStatus",
    "type": "type",
}


class DatasetLike(Protocol):
    """The parts of ``sandbox._data.Dataset`` the bulk server reads (kept structural so it stays a leaf)."""

    resources: dict[str, dict[str, dict[str, Any]]]
    by_patient: dict[str, dict[str, list[str]]]
    patient_ids: list[str]
    group_id: str


class FilterError(ValueError):
    """A ``_typeFilter`` the sandbox cannot apply (answered with a 400 OperationOutcome)."""


@dataclass(frozen=True)
class ResourceFilter:
    """One ``Type?param=v1,v2&param2=...`` query: every parameter must match, any value of a parameter may."""

    resource_type: str
    params: tuple[tuple[str, tuple[str, ...]], ...]

    def matches(self, resource: Mapping[str, Any]) -> bool:
        return all(_element_matches(resource.get(_FILTER_ELEMENTS[p]), values) for p, values in self.params)


def parse_type_filter(text: str) -> ResourceFilter:
    """Parse ``Observation?category=laboratory`` (also the form of Epic's sub-type API grants)."""
    rtype, sep, query = text.partition("?")
    if not sep or not rtype or not query:
        raise FilterError(f"Malformed _typeFilter value for type {rtype or '(none)'}.")
    params: list[tuple[str, tuple[str, ...]]] = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name not in _FILTER_ELEMENTS:
            raise FilterError(f"The _typeFilter search parameter {name!r} is not supported for {rtype}.")
        # Epic accepts %2C-escaped (already decoded here) and backslash-escaped commas
        # (docs/epic-notes.md §4.1).
        values = tuple(v.replace("\\,", ",") for v in value.split(",") if v)
        params.append((name, values))
    return ResourceFilter(rtype, tuple(params))


def _element_matches(element: Any, values: Sequence[str]) -> bool:
    """Token match of a string, Coding, CodeableConcept or list of them against ``code`` / ``system|code``."""
    if element is None:
        return False
    if isinstance(element, list):
        return any(_element_matches(item, values) for item in element)
    if isinstance(element, str):
        return element in values
    if isinstance(element, dict):
        codings = element.get("coding", [element] if "code" in element else [])
        for coding in codings:
            code, system = coding.get("code"), coding.get("system")
            for value in values:
                wanted_system, bar, wanted_code = value.rpartition("|")
                if code == wanted_code and (not bar or wanted_system == system):
                    return True
    return False


def group_members(dataset: DatasetLike, group_id: str) -> list[str] | None:
    """Patient ids of ``group_id``: its ``Group.member`` list when the dataset has that Group, else None."""
    group = dataset.resources.get("Group", {}).get(group_id)
    if group is not None:
        members = []
        for member in group.get("member", []):
            ref = str(member.get("entity", {}).get("reference", ""))
            if ref.startswith("Patient/"):
                members.append(ref.removeprefix("Patient/"))
        return members
    if group_id == dataset.group_id:
        return list(dataset.patient_ids)
    return None


@dataclass(frozen=True)
class BulkFile:
    """One output or error file: its resources (dataset ids, synthetic indexes, or literal lines)."""

    file_id: str
    resource_type: str
    count: int
    ids: tuple[str, ...] = ()
    synthetic: range = range(0)
    lines: tuple[dict[str, Any], ...] = ()


def parse_kickoff_params(
    params: Iterable[tuple[str, str]],
    dataset: DatasetLike,
    *,
    since: Literal["reject", "ignore"],
    type_filter: bool,
) -> tuple[list[str], dict[str, list[ResourceFilter]]]:
    """Requested types (default: every patient-compartment type the dataset has) and filters per type.

    Raises :class:`FilterError` for ``_since`` (Epic: "We do not support _since", docs/epic-notes.md §4.1), a
    refused ``_typeFilter``, an ``_outputFormat`` other than NDJSON, or an unknown type. Other parameters are
    ignored, as Epic ignores unknown search parameters.
    """
    types: list[str] = []
    filters: dict[str, list[ResourceFilter]] = {}
    for name, value in params:
        if name == "_type":
            types.extend(t.strip() for t in value.split(",") if t.strip())
        elif name == "_since" and since == "reject":
            raise FilterError("We do not support the _since parameter.")
        elif name == "_typeFilter":
            if not type_filter:  # Epic lacked it in early 2023; later tools use it (docs/epic-notes.md §4.1)
                raise FilterError("The _typeFilter parameter is not supported.")
            parsed = parse_type_filter(value)
            filters.setdefault(parsed.resource_type, []).append(parsed)
        elif name == "_outputFormat" and value not in (NDJSON, "application/ndjson", "ndjson"):
            raise FilterError(f"The _outputFormat {value!r} is not supported; use {NDJSON}.")
    known = PATIENT_COMPARTMENT_TYPES | dataset.by_patient.keys()
    for rtype in [*types, *filters]:
        if rtype not in known:
            raise FilterError(f"The resource type {rtype!r} is not valid for a Group export.")
    if not types:  # everything Epic has for the patients (Epic then recommends always limiting types)
        types = ["Patient", *sorted(t for t in dataset.by_patient if t in PATIENT_COMPARTMENT_TYPES)]
    return list(dict.fromkeys(types)), filters


def plan_export(
    dataset: DatasetLike,
    members: Sequence[str],
    types: Sequence[str],
    filters: Mapping[str, list[ResourceFilter]],
    *,
    allowed: frozenset[str] | None,
    resources_per_file: int,
    synthetic_observations: int,
    synthetic_per_file: int,
    new_id: Callable[[], str],
) -> tuple[list[BulkFile], list[BulkFile]]:
    """The output files and error files of one export (file ids from ``new_id``)."""
    outputs: list[BulkFile] = []
    notes: list[dict[str, Any]] = []
    for rtype in types:
        grants: list[ResourceFilter] | None = None  # None: the whole type is allowed
        if allowed is not None and rtype not in allowed:
            grants = _grants(allowed, rtype)
            which = f"some {rtype} sub-types" if grants else rtype
            diagnostics = f"Client not authorized for {which}. Resources of this type have not been included."
            notes.append(epic_issue("warning", "suppressed", "59204", diagnostics))
        ids = _select(dataset, rtype, members, filters.get(rtype), grants)
        synthetic = 0
        if rtype == "Observation" and not filters.get(rtype) and grants is None:
            synthetic = synthetic_observations
        if not ids and not synthetic:
            if grants != []:  # a wholly unauthorised type already has its 59204 line
                diagnostics = f"No {rtype} resources were found for the patients of this Group."
                notes.append(epic_issue("warning", "processing", "4101", diagnostics))
            continue
        for start in range(0, len(ids), resources_per_file):
            part = tuple(ids[start : start + resources_per_file])
            outputs.append(BulkFile(new_id(), rtype, len(part), ids=part))
        for start in range(0, synthetic, synthetic_per_file):
            span = range(start, min(synthetic, start + synthetic_per_file))
            outputs.append(BulkFile(new_id(), rtype, len(span), synthetic=span))
    # Always an error file, so clients must handle them (Epic puts notes there too, docs/epic-notes.md §4.4).
    if not notes:
        total = sum(f.count for f in outputs)
        # No Epic code fits a plain completion note, so this issue carries diagnostics only.
        notes.append(
            {
                "severity": "information",
                "code": "informational",
                "diagnostics": f"Exported {total} resources for {len(members)} patients.",
            }
        )
    lines = tuple(outcome(issue) for issue in notes)
    errors = [
        BulkFile(
            new_id(),
            "OperationOutcome",
            len(lines[i : i + resources_per_file]),
            lines=lines[i : i + resources_per_file],
        )
        for i in range(0, len(lines), resources_per_file)
    ]
    return outputs, errors


def _select(
    dataset: DatasetLike,
    rtype: str,
    members: Sequence[str],
    filters: list[ResourceFilter] | None,
    grants: list[ResourceFilter] | None,
) -> list[str]:
    """Ids of ``rtype`` resources of the Group's patients, in patient order, without duplicates."""
    if grants == []:
        return []
    table = dataset.resources.get(rtype, {})
    if rtype == "Patient":
        candidates = [pid for pid in members if pid in table]
    else:
        index = dataset.by_patient.get(rtype, {})
        candidates = [rid for pid in members for rid in index.get(pid, ()) if rid in table]
    selected = []
    for rid in dict.fromkeys(candidates):
        resource = table[rid]
        if filters and not any(f.matches(resource) for f in filters):
            continue
        if grants and not any(g.matches(resource) for g in grants):
            continue
        selected.append(rid)
    return selected


def _grants(allowed: frozenset[str], rtype: str) -> list[ResourceFilter]:
    """Sub-type grants such as ``Observation?category=laboratory`` for ``rtype`` (malformed ones grant nothing)."""
    grants = []
    for entry in allowed:
        if entry.startswith(f"{rtype}?"):
            try:
                grants.append(parse_type_filter(entry))
            except FilterError:
                continue
    return grants
