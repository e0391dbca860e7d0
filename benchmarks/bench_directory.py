"""Endpoint directory: load a generated Brands-style bundle of many thousand organisations, then look names up.

The bundle has what real directories hold (docs/epic-notes.md §5.1): accented and duplicate names across
brands, facilities that inherit their brand's endpoint through ``partOf``, endpoints with no name, DSTU2/STU3
addresses next to R4 ones, and retired endpoints. Printed: the bundle's size, the load time (JSON parse,
entries, index) and the time per name lookup (median and 99th percentile over queries of one to three partial
words). Target: a lookup well under a millisecond.

    python -m benchmarks directory          # or: python -m benchmarks directory -- --quick
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import orjson

from epic_fhir_async.directory import EndpointDirectory

NAME = "directory"

_PLACES = [
    "Springfield", "Riverside", "Fairview", "Franklin", "Greenville", "Bristol", "Clinton", "Salem", "Madison",
    "Georgetown", "Arlington", "Ashland", "Dover", "Oxford", "Jackson", "Burlington", "Manchester", "Milton",
    "Québec", "Montréal", "São Paulo", "Zürich", "Malmö", "Ålesund", "Córdoba", "Saint-Étienne", "Łódź",
]  # fmt: skip
_KINDS = [
    "Health", "Health System", "Medical Center", "Regional Hospital", "Clinic", "Children's Hospital",
    "University Hospitals", "Community Health", "Physicians Group", "Hôpital", "Care Partners", "Healthcare",
]  # fmt: skip
_SAINTS = [
    "St. Mary's",
    "St. Luke's",
    "Mercy",
    "Providence",
    "Trinity",
    "Baptist",
    "Methodist",
    "Good Samaritan",
]
_RETIRED_END = "2020-01-01"


def organisation_names(count: int, seed: int = 0) -> list[str]:
    """``count`` organisation names; about one in forty repeats an earlier one (another brand, same name)."""
    rng = random.Random(seed)
    names: list[str] = []
    for i in range(count):
        if names and rng.random() < 0.025:
            names.append(rng.choice(names))
            continue
        first = rng.choice(_SAINTS) if rng.random() < 0.3 else rng.choice(_PLACES)
        names.append(f"{first} {rng.choice(_KINDS)} {i}")
    return names


def _endpoint(
    endpoint_id: str, address: str, *, version: str, name: str | None, retired: str
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Endpoint",
        "id": endpoint_id,
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/endpoint-fhir-version", "valueCode": version}
        ],
        "status": "off" if retired == "status" else "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "hl7-fhir-rest",
        },
        "address": address,
    }
    if name is not None:
        resource["name"] = name
    if retired == "period":
        resource["period"] = {"start": "2015-01-01", "end": _RETIRED_END}
    return resource


def brands_bundle(organisations: int = 12_000, *, seed: int = 0) -> dict[str, Any]:
    """A Brands-style bundle: one Organization per name, one or more Endpoints per brand.

    Every tenth organisation is a facility ``partOf`` the one before it (no endpoint of its own); every
    fiftieth brand also has DSTU2 and STU3 addresses; every hundredth endpoint is retired (status ``off``
    or an ended period); every two-hundredth endpoint has no organisation and no name.
    """
    rng = random.Random(seed)
    names = organisation_names(organisations, seed)
    entries: list[dict[str, Any]] = []
    base = "https://directory.example.test/Endpoints/Brands"
    for i, name in enumerate(names):
        org_id = f"org-{i}"
        organization: dict[str, Any] = {
            "resourceType": "Organization",
            "id": org_id,
            "name": name,
            "active": True,
        }
        if i % 10 == 9:
            organization["partOf"] = {"reference": f"Organization/org-{i - 1}"}
        else:
            host = f"fhir{i}.example-{rng.randrange(10_000)}.test"
            refs = []
            versions = [("R4", "4.0.1")] + ([("STU3", "3.0.2"), ("DSTU2", "1.0.2")] if i % 50 == 0 else [])
            for label, version in versions:
                endpoint_id = f"ep-{i}-{label}"
                retired = "" if i % 100 else ("status" if i % 200 else "period")
                endpoint = _endpoint(
                    endpoint_id,
                    f"https://{host}/FHIR/api/FHIR/{label}/",
                    version=version,
                    name=None,
                    retired=retired,
                )
                entries.append({"fullUrl": f"{base}/Endpoint/{endpoint_id}", "resource": endpoint})
                refs.append({"reference": f"Endpoint/{endpoint_id}"})
            organization["endpoint"] = refs
        entries.append({"fullUrl": f"{base}/Organization/{org_id}", "resource": organization})
        if i % 200 == 199:  # an endpoint nobody names
            endpoint_id = f"ep-unnamed-{i}"
            endpoint = _endpoint(
                endpoint_id,
                f"https://unnamed{i}.example.test/api/FHIR/R4/",
                version="4.0.1",
                name=None,
                retired="",
            )
            entries.append({"fullUrl": f"{base}/Endpoint/{endpoint_id}", "resource": endpoint})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def queries(count: int, seed: int = 1) -> list[str]:
    """Partial-word queries of one to three words, some in other case or without accents."""
    rng = random.Random(seed)
    names = organisation_names(2000, 0)
    out = []
    for _ in range(count):
        words = rng.choice(names).split()
        take = rng.randint(1, min(3, len(words)))
        chosen = [w[: max(3, len(w) - rng.randint(0, 3))] for w in words[:take]]
        text = " ".join(chosen)
        out.append(text.upper() if rng.random() < 0.2 else text)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--organisations", type=int, default=12_000)
    parser.add_argument("--quick", action="store_true", help="500 lookups instead of 5000")
    args = parser.parse_args(argv)
    body = orjson.dumps(brands_bundle(args.organisations))
    start = time.perf_counter()
    directory = EndpointDirectory.from_bytes(body)
    load = time.perf_counter() - start
    timings = []
    found = 0
    for query in queries(500 if args.quick else 5000):
        t0 = time.perf_counter()
        found += len(directory.search(query))
        timings.append(time.perf_counter() - t0)
    timings.sort()
    median = statistics.median(timings) * 1e6
    p99 = timings[int(len(timings) * 0.99) - 1] * 1e6
    print(f"bundle: {args.organisations} organisations, {len(body) / 1e6:.1f} MB, {len(directory)} entries")
    print(f"load (parse + entries + index): {load * 1000:.0f} ms")
    print(
        f"name lookup: median {median:.1f} us, p99 {p99:.1f} us over {len(timings)} queries (target < 1000 us)"
    )
    print(f"matches per query (limit 20): {found / len(timings):.1f}")
