"""Fixtures for the sandbox bulk tests: a small hand-built dataset, a frozen clock, a BulkExports factory."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from epic_fhir_async.sandbox._bulk import BulkExports
from epic_fhir_async.sandbox._bulk_plan import DatasetLike
from epic_fhir_async.sandbox._clock import SandboxClock

BASE = "http://127.0.0.1:8765/interconnect-fhir-oauth/api/FHIR/R4"
GROUP = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"
SMALL_GROUP = "eSmallGroup0001"
MEMBERS = ["pat-a", "pat-b", "pat-c"]
OUTSIDER = "pat-outside"
LAB = "http://terminology.hl7.org/CodeSystem/observation-category"


@dataclass
class TinyDataset:
    """The shape of ``sandbox._data.Dataset`` (built by hand so these tests do not depend on the data)."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    by_patient: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    binaries: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    patient_ids: list[str] = field(default_factory=list)
    group_id: str = GROUP

    def add(self, resource: dict[str, Any], patient: str | None) -> None:
        rtype, rid = resource["resourceType"], resource["id"]
        self.resources.setdefault(rtype, {})[rid] = resource
        if patient is not None:
            self.by_patient.setdefault(rtype, {}).setdefault(patient, []).append(rid)


def build_tiny_dataset() -> TinyDataset:
    """3 Group members + 1 patient outside the Group; pat-a has 5 vitals + 2 labs, pat-b 3 vitals, pat-c none; Conditions."""
    ds = TinyDataset(patient_ids=[*MEMBERS, OUTSIDER])
    for pid in ds.patient_ids:
        ds.add({"resourceType": "Patient", "id": pid, "name": [{"family": pid.upper()}]}, pid)
    counts = {"pat-a": (5, 2), "pat-b": (3, 0), "pat-c": (0, 0), OUTSIDER: (4, 4)}
    for pid, (vitals, labs) in counts.items():
        for i in range(vitals + labs):
            category = "vital-signs" if i < vitals else "laboratory"
            ds.add(
                {
                    "resourceType": "Observation",
                    "id": f"obs-{pid}-{i}",
                    "status": "final",
                    "category": [{"coding": [{"system": LAB, "code": category}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": f"Patient/{pid}"},
                    "effectiveDateTime": f"2024-01-{i + 1:02d}T08:00:00Z",
                },
                pid,
            )
    for pid in ("pat-a", OUTSIDER):
        ds.add(
            {"resourceType": "Condition", "id": f"cond-{pid}", "subject": {"reference": f"Patient/{pid}"}},
            pid,
        )
    ds.add(
        {
            "resourceType": "Group",
            "id": GROUP,
            "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in MEMBERS],
        },
        None,
    )
    ds.add(
        {
            "resourceType": "Group",
            "id": SMALL_GROUP,
            "member": [{"entity": {"reference": "Patient/pat-b"}}],
        },
        None,
    )
    return ds


@pytest.fixture
def clock() -> SandboxClock:
    return SandboxClock(frozen_at=1_750_000_000.0)


@pytest.fixture
def stats() -> Counter[str]:
    return Counter()


@pytest.fixture
def dataset() -> DatasetLike:
    return build_tiny_dataset()


@pytest.fixture
def make_bulk(dataset: DatasetLike, clock: SandboxClock, stats: Counter[str]) -> Callable[..., BulkExports]:
    def factory(**options: Any) -> BulkExports:
        return BulkExports(dataset=dataset, base_url=BASE, clock=clock, stats=stats, **options)

    return factory
