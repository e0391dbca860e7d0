"""The bytes of a sandbox bulk export's NDJSON files, generated chunk by chunk.

Each file is produced lazily in ~64 KB chunks (one resource per ``\\n``-ended line, compact JSON), so that a
gigabyte of synthetic Observations streams with flat server memory (Epic's files: docs/epic-notes.md
§4.4). What a file holds is decided by :mod:`._bulk_plan`.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .. import _json
from ._bulk_plan import BulkFile

__all__ = ["CHUNK_BYTES", "SyntheticObservations", "stream_file"]

#: Target size of one streamed chunk of a file.
CHUNK_BYTES = 64 * 1024


class SyntheticObservations:
    """Many Observations generated on the fly for benchmarks, without a dataset that large.

    A pool of up to 1000 distinct Observations (from ``sandbox._data.generate_observations`` when the data
    module has it, else a stand-in of the same shape) is serialised once with a placeholder id; each line is
    then ``prefix + unique id + suffix``, so a gigabyte costs a few byte joins per line and no Python dicts.
    """

    def __init__(self, patient_ids: Sequence[str], *, seed: int) -> None:
        self._seed = seed
        patients = list(patient_ids) or ["synthetic-patient"]
        pool: list[tuple[bytes, bytes]] = []
        per_patient = max(1, 1000 // len(patients))
        for resource in _pool_resources(patients, per_patient, seed):
            reordered = {"resourceType": "Observation", "id": "\x00SYNTH\x00"}
            reordered.update({k: v for k, v in resource.items() if k not in ("resourceType", "id")})
            prefix, _, suffix = _json.dumps_line(reordered).partition(b"\\u0000SYNTH\\u0000")
            pool.append((prefix, suffix))
            if len(pool) >= 1000:
                break
        self._pool = pool

    def line(self, index: int) -> bytes:
        prefix, suffix = self._pool[index % len(self._pool)]
        # 45 characters, like Epic's long Observation ids (docs/epic-notes.md §3.12), unique per index.
        return b"".join((prefix, b"fSynth%04d.%034d" % (self._seed % 10000, index), suffix))


def _pool_resources(patients: Sequence[str], per_patient: int, seed: int) -> Iterator[dict[str, Any]]:
    # Looked up at run time: the data module may predate (or lack) generate_observations.
    try:
        data = importlib.import_module(f"{__package__}._data")
    except ImportError:
        data = None
    generator: Callable[..., list[dict[str, Any]]] = getattr(
        data, "generate_observations", _standin_observations
    )
    for pid in patients:
        yield from generator(pid, per_patient, seed=seed)


def _standin_observations(patient_id: str, n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Vital-sign Observations in the dataset's shape (LOINC beside an Epic flowsheet OID coding)."""
    rng = random.Random(f"{seed}:{patient_id}")  # noqa: S311  (test data, not security)
    vitals = [("8867-4", "Heart rate", "/min", 50, 110), ("8310-5", "Body temperature", "Cel", 36, 39)]
    out = []
    for i in range(n):
        loinc, text, unit, low, high = vitals[i % len(vitals)]
        out.append(
            {
                "resourceType": "Observation",
                "id": f"standin-{patient_id}-{i}",
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "vital-signs",
                                "display": "Vital Signs",
                            }
                        ],
                        "text": "Vital Signs",
                    }
                ],
                "code": {
                    "coding": [
                        {"system": "http://loinc.org", "code": loinc, "display": text},
                        {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.707679", "code": str(5 + i % 2)},
                    ],
                    "text": text,
                },
                "subject": {"reference": f"Patient/{patient_id}"},
                "effectiveDateTime": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T08:{i % 60:02d}:00Z",
                "valueQuantity": {
                    "value": round(rng.uniform(low, high), 1),
                    "unit": unit,
                    "system": "http://unitsofmeasure.org",
                    "code": unit,
                },
            }
        )
    return out


async def stream_file(
    file: BulkFile,
    resources: Mapping[str, Mapping[str, Any]],
    synthetic: SyntheticObservations | None,
    on_chunk: Callable[[int], None],
) -> AsyncIterator[bytes]:
    """The NDJSON bytes of ``file`` in ~:data:`CHUNK_BYTES` chunks (one resource per ``\\n``-ended line)."""
    for chunk in _chunks(_file_lines(file, resources, synthetic)):
        on_chunk(len(chunk))
        yield chunk


def _file_lines(
    file: BulkFile, resources: Mapping[str, Mapping[str, Any]], synthetic: SyntheticObservations | None
) -> Iterator[bytes]:
    for rid in file.ids:
        yield _json.dumps_line(resources[rid])
    if synthetic is not None:
        for index in file.synthetic:
            yield synthetic.line(index)
    for line in file.lines:
        yield _json.dumps_line(line)


def _chunks(lines: Iterable[bytes]) -> Iterator[bytes]:
    buffer: list[bytes] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)
