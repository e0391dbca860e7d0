"""The server half of ``bench_pull``: the sandbox with a benchmark-sized dataset, served on 127.0.0.1.

Every benchmark patient gets ``per_type`` resources of each type, cloned (shallow copies with their own
``id`` and ``subject``) from resources the sandbox's own generator made, so sizes and shapes stay
Epic-like (about 1-2 KB each) while the server's memory stays modest.
"""

from __future__ import annotations

import copy
from typing import Any

import anyio

from epic_fhir_async.sandbox import EpicSandbox
from epic_fhir_async.sandbox._data import build_dataset, generate_observations

TEMPLATE_TYPES = ("Condition", "MedicationRequest", "Encounter")


def populate(sb: EpicSandbox, patients: int, per_type: int) -> list[str]:
    """Add ``patients`` benchmark patients to the sandbox's dataset (in place) and return their ids."""
    source = build_dataset(seed=1, patients=100)
    templates: dict[str, list[dict[str, Any]]] = {
        rtype: list(source.resources[rtype].values()) for rtype in TEMPLATE_TYPES
    }
    data = sb.dataset
    some_patient = next(iter(source.resources["Patient"].values()))
    ids = []
    for n in range(patients):
        pid = f"eBench{n:05d}.x{n * 7919 % 100000:05d}3"
        ids.append(pid)
        patient = copy.copy(some_patient)
        patient["id"] = pid
        data.resources["Patient"][pid] = patient
        for obs in generate_observations(pid, per_type, seed=n, category="vital-signs"):
            data.resources["Observation"][obs["id"]] = obs
            data.by_patient.setdefault("Observation", {}).setdefault(pid, []).append(obs["id"])
        for rtype in TEMPLATE_TYPES:
            pool = templates[rtype]
            index = data.by_patient.setdefault(rtype, {}).setdefault(pid, [])
            for i in range(per_type):
                resource = copy.copy(pool[i % len(pool)])
                rid = f"{pid}.{rtype[:3]}{i:04d}"
                resource["id"] = rid
                resource["subject"] = {"reference": f"Patient/{pid}"}
                data.resources[rtype][rid] = resource
                index.append(rid)
    return ids


async def serve_forever(conn: Any, patients: int, per_type: int, latency: float) -> None:
    sb = EpicSandbox(seed=0, patients=0, page_size=100, latency=latency)
    ids = populate(sb, patients, per_type)
    token = sb.issue_token("bench-pull", lifetime=24 * 3600.0)
    async with sb.serve(host="127.0.0.1", port=0) as base_url:
        conn.send((base_url, token, ids))
        await anyio.to_thread.run_sync(conn.recv)  # until the parent says stop


def serve_in_child(conn: Any, patients: int, per_type: int, latency: float) -> None:
    """The child process's entry point."""
    anyio.run(serve_forever, conn, patients, per_type, latency)
