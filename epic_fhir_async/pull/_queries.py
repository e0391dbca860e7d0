"""Epic-aware expansion of pull query templates into per-patient searches (pure, no I/O).

A pull is given resource types or query templates (``"Condition"``,
``"Observation?category=laboratory&date=ge2024-01-01"``) and turns each into one or more
:class:`PullQuery` objects, each of which becomes one search per patient. Epic refuses searches that
miss a required parameter (docs/epic-notes.md §3.3; one app imported no labs because it searched Observation
without a category), so by default the rules below, one per row of that section's table, add what Epic needs
(the requirements themselves, shared with ``client.search()``'s check, are in ``_epic_search``):

* ``Patient`` becomes ``Patient?_id=<id>``: Patient search needs demographics, ``_id`` or ``identifier``
  and ``Patient?patient=`` is meaningless (Patient row).
* ``Observation`` without ``category``/``code`` becomes one search per category (vital-signs, laboratory,
  social-history by default); ``procedure``, ``therapy`` and ``activity`` are refused because Epic errors
  on them (Observation row).
* ``CarePlan`` without ``category`` becomes one search per configured category (CarePlan row).
* ``EpisodeOfCare`` without ``type`` needs a configured ``system|code`` type (EpisodeOfCare row);
  Epic has no universal default, so none is guessed.
* every other type gets ``patient=<id>`` (clinical types need ``patient``; AllergyIntolerance
  without it is even a 403).

With expansion off, templates are used verbatim plus ``patient=<id>``. :class:`UniqueIds` reads the
patient ids (checked, each once) for the engine.
"""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import anyio

from .._epic_search import (
    DEFAULT_CAREPLAN_CATEGORIES,
    OBSERVATION_CATEGORIES,
    REJECTED_OBSERVATION_CATEGORIES,
)
from .._errors import ConfigurationError
from .._r4_types import R4_RESOURCE_TYPES
from .._urls import check_id, check_type

__all__ = [
    "EpicExpansion",
    "PatientIds",
    "PullQuery",
    "UniqueIds",
    "check_patient_id",
    "check_resource_type",
    "expand_queries",
]

#: What a pull accepts as patients: ids in any (async) iterable, read lazily.
PatientIds = Iterable[str] | AsyncIterable[str]

#: Types that are not in the Patient compartment: a ``patient=`` search for them is meaningless.
NOT_PATIENT_SCOPED = frozenset(
    {"Binary", "Group", "Location", "Medication", "Organization", "Practitioner", "PractitionerRole"}
)
#: Parameters the pull adds itself; a template must not set them.
_PATIENT_PARAMS = frozenset({"patient", "subject", "_id"})


@dataclass(frozen=True, slots=True)
class EpicExpansion:
    """Which searches a bare type expands to (docs/epic-notes.md §3.3); pass as ``pull(..., expand=...)``.

    ``observation_categories``: one Observation search per category (add ``"exam"``, ``"survey"``,
    ``"imaging"`` for more). ``careplan_categories``: one CarePlan search per category code.
    ``episode_of_care_types``: ``system|code`` values for EpisodeOfCare (Epic requires one; none by default).
    """

    observation_categories: tuple[str, ...] = OBSERVATION_CATEGORIES[:3]
    careplan_categories: tuple[str, ...] = DEFAULT_CAREPLAN_CATEGORIES
    episode_of_care_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad = sorted(set(self.observation_categories) & REJECTED_OBSERVATION_CATEGORIES)
        if bad:
            raise ConfigurationError(
                f"Epic rejects Observation searches with category {', '.join(bad)} "
                f"(docs/epic-notes.md §3.3); use some of {', '.join(OBSERVATION_CATEGORIES)}"
            )


@dataclass(frozen=True, slots=True)
class PullQuery:
    """One search of a pull, run once per patient: ``resource_type`` plus fixed ``params``.

    ``label`` (e.g. ``"Observation?category=laboratory"``) names the query in items, errors and checkpoints;
    it never contains a patient id. ``patient_param`` is the parameter that receives the patient id.
    """

    resource_type: str
    params: tuple[tuple[str, str], ...]
    patient_param: str = "patient"

    @property
    def label(self) -> str:
        return f"{self.resource_type}?{urlencode(self.params)}" if self.params else self.resource_type

    def params_for(self, patient_id: str) -> dict[str, str | list[str]]:
        """The search parameters for one patient, repeated names gathered into lists."""
        out: dict[str, str | list[str]] = {}
        for name, value in (*self.params, (self.patient_param, patient_id)):
            old = out.get(name)
            if old is None:
                out[name] = value
            elif isinstance(old, list):
                old.append(value)
            else:
                out[name] = [old, value]
        return out


def parse_template(template: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Split ``"Type?a=1&b=2"`` into the type and its parameters (order kept, repeats allowed)."""
    if not isinstance(template, str) or not template.strip():
        raise ConfigurationError("a pull query must be a resource type or a 'Type?param=value' template")
    resource_type, _, query = template.strip().partition("?")
    resource_type = resource_type.strip().strip("/")
    if not resource_type.isalnum() or not resource_type[0].isupper():
        raise ConfigurationError(
            f"{resource_type!r} is not a FHIR resource type: use e.g. 'Condition' or 'Observation?category=laboratory'"
        )
    params = tuple(parse_qsl(query, keep_blank_values=True)) if query else ()
    taken = sorted({name for name, _ in params} & _PATIENT_PARAMS)
    if taken:
        raise ConfigurationError(
            f"query template for {resource_type} sets {', '.join(taken)}: the pull adds the patient itself"
        )
    return resource_type, params


def _has(params: Sequence[tuple[str, str]], *names: str) -> bool:
    return any(name.split(":")[0] in names for name, _ in params)


def _expand_one(
    resource_type: str, params: tuple[tuple[str, str], ...], rules: EpicExpansion
) -> list[PullQuery]:
    if resource_type == "Patient":
        # docs/epic-notes.md §3.3: Patient search needs _id/identifier/demographics, so read it by _id.
        return [PullQuery("Patient", params, patient_param="_id")]
    if resource_type in NOT_PATIENT_SCOPED:
        raise ConfigurationError(f"{resource_type} is not patient-scoped, so it cannot be pulled per patient")
    if resource_type == "Observation":
        # docs/epic-notes.md §3.3: Observation needs patient plus category or code, else 400 (59108).
        categories = [v for name, v in params if name == "category"]
        bad = sorted(set(",".join(categories).split(",")) & REJECTED_OBSERVATION_CATEGORIES)
        if bad:
            raise ConfigurationError(
                f"Epic rejects Observation category {', '.join(bad)} (docs/epic-notes.md §3.3)"
            )
        if categories or _has(params, "code"):
            return [PullQuery(resource_type, params)]
        return [PullQuery(resource_type, (*params, ("category", c))) for c in rules.observation_categories]
    if resource_type == "CarePlan" and not _has(params, "category"):
        # docs/epic-notes.md §3.3, CarePlan row: "This resource requires a category for searching".
        return [PullQuery(resource_type, (*params, ("category", c))) for c in rules.careplan_categories]
    if resource_type == "EpisodeOfCare" and not _has(params, "type"):
        # docs/epic-notes.md §3.3: EpisodeOfCare needs a specific type (system|code); no safe default.
        if not rules.episode_of_care_types:
            raise ConfigurationError(
                "Epic's EpisodeOfCare search needs type=system|code (docs/epic-notes.md §3.3): use a "
                "template 'EpisodeOfCare?type=...' or EpicExpansion(episode_of_care_types=[...])"
            )
        return [PullQuery(resource_type, (*params, ("type", t))) for t in rules.episode_of_care_types]
    # docs/epic-notes.md §3.3: Condition, DiagnosticReport, DocumentReference, Encounter, Immunization,
    # MedicationRequest, Procedure need patient (400 without); AllergyIntolerance answers 403 without it.
    return [PullQuery(resource_type, params)]


def expand_queries(
    templates: Iterable[str] | str, expand: bool | EpicExpansion = True
) -> tuple[PullQuery, ...]:
    """Turn the pull's ``types`` into the searches to run per patient, duplicates removed, order kept.

    ``expand=True`` applies Epic's rules with the default :class:`EpicExpansion`; an :class:`EpicExpansion`
    applies them with its settings; ``False`` uses each template verbatim with ``patient=<id>`` added.
    """
    if isinstance(templates, str):
        templates = [templates]
    rules = expand if isinstance(expand, EpicExpansion) else EpicExpansion()
    out: dict[str, PullQuery] = {}
    for template in templates:
        resource_type, params = parse_template(template)
        queries = (
            _expand_one(resource_type, params, rules)
            if expand is not False
            else [PullQuery(resource_type, params)]
        )
        for query in queries:
            out.setdefault(query.label, query)
    if not out:
        raise ConfigurationError("a pull needs at least one resource type or query template")
    return tuple(out.values())


def _check_id(patient_id: object) -> str:
    if not isinstance(patient_id, str) or not patient_id:
        raise ConfigurationError("patient ids must be non-empty strings (FHIR ids)")
    return patient_id


def check_patient_id(value: object) -> str:
    """``value`` if it is a valid FHIR id for a patient, else :class:`ConfigurationError` saying what is wrong
    (never repeating the id: it identifies a patient). For checking ids read from a file before a pull."""
    return check_id(value, what="patient id")


def check_resource_type(value: object) -> str:
    """``value`` if it is a FHIR R4 resource type, else :class:`ConfigurationError` naming the nearest types.

    Stricter than the client, which sends a well-formed unknown name and lets the server decide: for checking
    types typed by a person (a command line, a config file) before a pull or export starts, since Epic answers
    an unknown type with an IIS 404 page per request (docs/epic-notes.md §3.7).
    """
    name = check_type(value)  # shape and case ("patient" -> did you mean 'Patient'?)
    if name in R4_RESOURCE_TYPES:
        return name
    close = difflib.get_close_matches(name, sorted(R4_RESOURCE_TYPES), n=3, cutoff=0.6)
    hint = (
        f"did you mean {' or '.join(repr(c) for c in close)}?"
        if close
        else "see https://hl7.org/fhir/R4/resourcelist.html"
    )
    raise ConfigurationError(f"unknown resource type {name!r}: not a FHIR R4 resource type; {hint}")


class UniqueIds:
    """The checked patient ids, each once, in first-seen order: ``async for pid in UniqueIds(patients)``.

    A repeated id would pull the same streams twice (duplicate items, and a checkpoint would see the patient
    finish twice), so repeats are skipped; the set of ids seen is the pull's only per-patient memory. A plain
    iterator class, not an async generator: a bare ``async for`` over a pull can be left with ``break`` and
    then nothing of ours is left for the garbage collector to finalise (which trio reports as an error).
    """

    __slots__ = ("_async", "_seen", "_sync")

    def __init__(self, patients: PatientIds) -> None:
        self._seen: set[str] = set()
        self._async: AsyncIterator[str] | None = None
        self._sync: Iterator[str] | None = None
        if isinstance(patients, AsyncIterable):
            self._async = aiter(patients)
        else:
            self._sync = iter(patients)

    def __aiter__(self) -> UniqueIds:
        return self

    async def __anext__(self) -> str:
        seen = self._seen
        while True:
            if self._sync is not None:
                try:
                    pid = next(self._sync)
                except StopIteration:
                    raise StopAsyncIteration from None
            else:
                assert self._async is not None
                pid = await self._async.__anext__()
            if _check_id(pid) not in seen:
                seen.add(pid)
                return pid

    async def aclose(self) -> None:
        """Close an async iterator of ids: once handed to the pull it is ours alone, so close it in this task."""
        aclose = getattr(self._async, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                await aclose()
