"""The sandbox's synthetic, deterministic dataset: Epic's named test patients plus seeded generated ones.

``build_dataset(seed, patients)`` is what the sandbox app, its search and its bulk export read from; Epic's
own test patients keep their real ids and data highlights (docs/epic-notes.md §6). Everything derives from
``random.Random(seed)`` and a fixed anchor date (2026-01-01), never the global RNG or the wall clock, so the
same seed always gives byte-identical resources. Resources are plain JSON-ready dicts without ``meta`` (Epic
sends none, docs/epic-notes.md §3.11) and reference each other relatively (``Patient/<id>``, §3.6). Treat them
as read-only: sub-objects are shared between resources for speed, so copy a resource (``copy.deepcopy``)
before changing it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _data_codes as c
from ._data_clinical import (
    PatientContext,
    make_allergy,
    make_condition,
    make_diagnostic_report,
    make_encounter,
    make_immunization,
    make_medication_request,
    make_observation,
    make_procedure,
    observation,
)
from ._data_docs import document_provenance, make_document_reference
from ._data_ids import DAY, long_id, short_id
from ._data_people import (
    NAMED_PATIENTS,
    NAMED_PRACTITIONERS,
    ORGANIZATION_ID,
    generated_patient,
    generated_practitioners,
    organization_resource,
    patient_resource,
    practitioner_resource,
)

__all__ = ["GROUP_ID", "Dataset", "build_dataset", "generate_observations"]

#: Epic's sandbox bulk Group (docs/epic-notes.md §6).
GROUP_ID = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"

# Data kinds -> resource type. Observation and Condition kinds are their category codes.
KINDS: dict[str, str] = {
    "encounters": "Encounter",
    "vital-signs": "Observation",
    "laboratory": "Observation",
    "social-history": "Observation",
    "problem-list-item": "Condition",
    "encounter-diagnosis": "Condition",
    "health-concern": "Condition",
    "medications": "MedicationRequest",
    "allergies": "AllergyIntolerance",
    "immunizations": "Immunization",
    "procedures": "Procedure",
    "reports": "DiagnosticReport",
    "documents": "DocumentReference",
}
# (min, max) per generated patient; moderate so tests stay fast.
_GENERATED_RANGES: dict[str, tuple[int, int]] = {
    "encounters": (2, 12),
    "vital-signs": (5, 40),
    "laboratory": (5, 30),
    "social-history": (0, 2),
    "problem-list-item": (1, 8),
    "encounter-diagnosis": (0, 6),
    "health-concern": (0, 2),
    "medications": (1, 10),
    "allergies": (0, 4),
    "immunizations": (0, 8),
    "procedures": (0, 5),
    "reports": (0, 5),
    "documents": (1, 6),
}
_EMPTY_KIND_RATE = 0.1  # share of generated patients with no data of a given kind (so searches give 4101)


@dataclass
class Dataset:
    """The sandbox's resources, indexed for search: what the FHIR server, its search and bulk export read."""

    resources: dict[str, dict[str, dict[str, Any]]]  # type -> id -> resource (JSON-ready, no meta)
    by_patient: dict[str, dict[str, list[str]]]  # type -> patient id -> resource ids, newest first
    binaries: dict[str, tuple[str, bytes]]  # Binary id -> (content type, raw bytes)
    patient_ids: list[str]  # Epic's named sandbox patients first, then generated
    group_id: str  # GROUP_ID

    def copy(self) -> Dataset:
        """A copy whose indexes a sandbox may write to (the resources themselves stay shared, read-only).

        :func:`build_dataset` caches and shares its result, so each sandbox takes a copy: one sandbox's
        creates and updates must not leak into another's.
        """
        return Dataset(
            resources={t: dict(v) for t, v in self.resources.items()},
            by_patient={t: {p: list(ids) for p, ids in v.items()} for t, v in self.by_patient.items()},
            binaries=dict(self.binaries),
            patient_ids=list(self.patient_ids),
            group_id=self.group_id,
        )


class _Builder:
    """Accumulates resources and the per-patient index while patients are generated."""

    def __init__(self, seed: int, patients: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - synthetic test data, not crypto
        self.resources: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in sorted(set(KINDS.values()))}
        self.binaries: dict[str, tuple[str, bytes]] = {}
        self.patient_ids: list[str] = []
        self._index: dict[str, dict[str, list[tuple[int, str]]]] = {t: {} for t in self.resources}
        self.resources["Patient"] = {}
        self.resources["Organization"] = {ORGANIZATION_ID: organization_resource()}
        self.organization = {
            "reference": f"Organization/{ORGANIZATION_ID}",
            "display": "Epic Hospital System",
        }
        pract = [(pid, family, given) for pid, given, family in NAMED_PRACTITIONERS]
        pract += generated_practitioners(self.rng, 6)
        self.resources["Practitioner"] = {p[0]: practitioner_resource(*p) for p in pract}
        self.practitioners = [{"reference": f"Practitioner/{p}", "display": f"{g} {f}"} for p, f, g in pract]
        self.medications: list[dict[str, Any]] = []
        self.resources["Medication"] = {}
        for rxnorm, name, _ in c.MEDICATIONS:
            mid = short_id(self.rng)
            self.resources["Medication"][mid] = {
                "resourceType": "Medication",
                "id": mid,
                "code": {
                    "coding": [c.coding(c.EPIC_MED, rxnorm, name), c.coding(c.RXNORM, rxnorm, name)],
                    "text": name,
                },
            }
            self.medications.append({"reference": f"Medication/{mid}", "display": name})
        self.patients = patients

    def add(self, patient_id: str, resource: dict[str, Any], age: int) -> None:
        rtype = resource["resourceType"]
        self.resources[rtype][resource["id"]] = resource
        self._index[rtype].setdefault(patient_id, []).append((age, resource["id"]))

    def patient(
        self, resource: dict[str, Any], display: str, counts: dict[str, int], samples: dict[str, str]
    ) -> None:
        """Add one patient and ``counts[kind]`` resources of each data kind."""
        pid = resource["id"]
        self.resources["Patient"][pid] = resource
        self.patient_ids.append(pid)
        ctx = PatientContext(self.rng, pid, display, self.practitioners, self.organization)

        def many(kind: str, make: Callable[[], tuple[dict[str, Any], int]]) -> list[tuple[str, int]]:
            made = []
            for i in range(counts.get(kind, 0)):
                res, age = make()
                if i == 0 and kind in samples:
                    res["id"] = samples[kind]  # a real id from Epic's sandbox (docs/epic-notes.md §6)
                self.add(pid, res, age)
                made.append((res["id"], age))
            return made

        for _ in range(counts.get("encounters", 0)):
            enc, age = make_encounter(ctx)
            self.add(pid, enc, age)
        if "encounters" in samples and ctx.encounters:
            self._rename_first_encounter(pid, ctx, samples["encounters"])
        many("vital-signs", lambda: make_observation(ctx, "vital-signs"))
        labs = many("laboratory", lambda: make_observation(ctx, "laboratory"))
        many("social-history", lambda: make_observation(ctx, "social-history"))
        for category in ("problem-list-item", "encounter-diagnosis", "health-concern"):
            many(category, functools.partial(make_condition, ctx, category))
        many("medications", lambda: make_medication_request(ctx, self.medications))
        many("allergies", lambda: make_allergy(ctx))
        many("immunizations", lambda: make_immunization(ctx))
        many("procedures", lambda: make_procedure(ctx))
        labs.sort(key=lambda item: item[1])
        n_reports = counts.get("reports", 0)
        for i in range(n_reports):
            # Each report points at a slice of this patient's lab results (the references must resolve).
            share = labs[i * len(labs) // n_reports : (i + 1) * len(labs) // n_reports] if labs else []
            report, age = make_diagnostic_report(ctx, share or labs[i % len(labs) :][:1])
            self.add(pid, report, age)
        doc_samples = {"documents": samples["documents"]} if "documents" in samples else {}
        for i in range(counts.get("documents", 0)):
            if i == 0 and doc_samples:
                # Epic's captured sample note and its two Binaries (docs/epic-notes.md §6).
                binary_ids = ("eAkaILL5xuep7ieMKl6ZOXA3", "fgczndarV4g9uyNdJkH6Nh2DZm.eqZOAhsJyyZ0U04684")
                doc, age = make_document_reference(
                    ctx, self.binaries, doc_id=doc_samples["documents"], binary_ids=binary_ids
                )
            else:
                doc, age = make_document_reference(ctx, self.binaries)
            self.add(pid, doc, age)
            provenance = document_provenance(doc)  # not per-patient indexed: reached through its target
            self.resources.setdefault("Provenance", {})[provenance["id"]] = provenance

    def _rename_first_encounter(self, pid: str, ctx: PatientContext, new_id: str) -> None:
        ref, _ = ctx.encounters[0]
        old_id = ref["reference"].split("/", 1)[1]
        enc = self.resources["Encounter"].pop(old_id)
        enc["id"] = new_id
        self.resources["Encounter"][new_id] = enc
        ref["reference"] = f"Encounter/{new_id}"
        self._index["Encounter"][pid] = [
            (a, new_id if i == old_id else i) for a, i in self._index["Encounter"][pid]
        ]

    def finish(self) -> Dataset:
        by_patient: dict[str, dict[str, list[str]]] = {}
        for rtype, per_patient in self._index.items():
            by_patient[rtype] = {pid: [rid for _, rid in sorted(items)] for pid, items in per_patient.items()}
        members = [{"entity": {"reference": f"Patient/{pid}"}} for pid in self.patient_ids]
        self.resources["Group"] = {
            GROUP_ID: {
                "resourceType": "Group",
                "id": GROUP_ID,
                "identifier": [{"system": f"{c.EPIC}.2.698084", "value": "BULKGROUP"}],
                "active": True,
                "type": "person",
                "actual": True,
                "name": "Sandbox bulk export group",
                "quantity": len(members),
                "member": members,
            }
        }
        return Dataset(self.resources, by_patient, self.binaries, self.patient_ids, GROUP_ID)


def _generated_counts(rng: random.Random, index: int) -> dict[str, int]:
    if index % 25 == 24:
        return {}  # a patient with no clinical data at all: every search for it gives Epic's 4101
    counts = {}
    for kind, (low, high) in _GENERATED_RANGES.items():
        counts[kind] = 0 if rng.random() < _EMPTY_KIND_RATE else rng.randint(low, high)
    if counts["laboratory"] == 0:
        counts["reports"] = 0  # a lab report needs lab results to point at
    return counts


@functools.lru_cache(maxsize=8)
def build_dataset(seed: int = 0, patients: int = 100) -> Dataset:
    """Build (once per ``(seed, patients)``, then cached) Epic's named sandbox patients plus ``patients`` more.

    Deterministic: the same arguments always produce identical resources. The returned object is shared by
    every caller with the same arguments; do not mutate it (copy what you change).
    """
    if patients < 0:
        raise ValueError("patients must be >= 0")
    builder = _Builder(seed, patients)
    for named in NAMED_PATIENTS:
        display = f"{named.family}, {' '.join(named.given)}"  # Epic: "Lopez, Camila Maria"
        resource = patient_resource(
            named.id, named.given, named.family, named.birth_date, named.gender, named.ids, builder.rng
        )
        builder.patient(resource, display, named.counts, named.sample_ids)
    for index in range(patients):
        resource, display = generated_patient(index, builder.rng)
        builder.patient(resource, display, _generated_counts(builder.rng, index), {})
    return builder.finish()


def generate_observations(
    patient_id: str, n: int, *, seed: int = 0, category: str = "vital-signs"
) -> list[dict[str, Any]]:
    """``n`` realistic Epic-shaped Observations (~1.5-2 KB of JSON each) for ``patient_id``, for benchmarks.

    Deterministic from ``(patient_id, seed, category)``; ``category`` is ``vital-signs``, ``laboratory`` or
    ``social-history``. Encounter and performer references point at ids that need not exist in a dataset.
    """
    if category not in c.OBS_CATEGORY_DISPLAY:
        raise ValueError(f"unknown Observation category {category!r}")
    rng = random.Random(f"{seed}:{patient_id}:{category}")  # noqa: S311 - not crypto
    subject = {"reference": f"Patient/{patient_id}", "display": "Patient, Benchmark"}
    encounters = [
        {
            "reference": f"Encounter/{short_id(rng)}",
            "identifier": {
                "use": "usual",
                "system": c.EPIC_CSN,
                "value": str(rng.randrange(10_000, 99_999_999)),
            },
            "display": "Office Visit",
        }
        for _ in range(8)
    ]
    performers = [
        {"reference": f"Practitioner/{pid}", "display": f"{g} {f}"} for pid, g, f in NAMED_PRACTITIONERS
    ]
    out = []
    for _ in range(n):
        age = rng.randrange(60, 5 * 365 * DAY)
        out.append(
            observation(
                rng,
                long_id(rng),
                subject,
                encounters[rng.randrange(8)],
                performers[rng.randrange(3)],
                age,
                category,
            )
        )
    out.sort(key=lambda obs: obs["effectiveDateTime"], reverse=True)
    return out
