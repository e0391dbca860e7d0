"""Typed models against plain dicts: the CPU cost of ``to_model`` (fhir.resources R4B) on Epic-shaped resources.

A page of 1000 Epic-shaped Observations (the sandbox's generator, as ``bench_search`` serves them) and the
sandbox's other resource types. Printed per resource: ``orjson.loads`` of the page (what a search costs per
resource with dicts), ``to_model`` of each dict, and the ratio; then the same for each type of the sandbox's
dataset. Plain dicts stay the default for this reason.

    python -m benchmarks models             # or: python -m benchmarks models -- --quick
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import orjson

from epic_fhir_async.models import to_model
from epic_fhir_async.sandbox import EpicSandbox

NAME = "models"
PATIENT = "eq081-VQEgP8drUUqCWzHfw3"


def _best(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def _page() -> bytes:
    from epic_fhir_async.sandbox._data import generate_observations

    resources = generate_observations(PATIENT, 1000, seed=7)
    entries = [
        {"fullUrl": f"https://x/Observation/{r['id']}", "resource": r, "search": {"mode": "match"}}
        for r in resources
    ]
    return orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else 7
    body = _page()
    resources = [e["resource"] for e in orjson.loads(body)["entry"]]
    to_model(resources[0])  # import fhir.resources and build the class once, outside the timing
    parse = _best(repeat, lambda: orjson.loads(body)) / len(resources)
    convert = _best(repeat, lambda: [to_model(r) for r in resources]) / len(resources)
    print(f"page: {len(resources)} Observations, {len(body) / 1e6:.2f} MB")
    print(f"{'per resource':34} {'us':>9} {'x dict':>8}")
    print(f"{'dicts (orjson.loads of the page)':34} {parse * 1e6:9.1f} {1.0:8.1f}")
    print(f"{'+ to_model (fhir.resources R4B)':34} {convert * 1e6:9.1f} {(parse + convert) / parse:8.1f}")
    dataset = EpicSandbox(seed=0, patients=20).dataset
    print(f"\n{'to_model by type':34} {'us':>9} {'n':>8}")
    for kind, by_id in sorted(dataset.resources.items()):
        items: list[dict[str, Any]] = list(by_id.values())[:300]
        to_model(items[0])
        cost = _best(repeat, _converter(items)) / len(items)
        print(f"{kind:34} {cost * 1e6:9.1f} {len(items):8d}")


def _converter(items: list[dict[str, Any]]) -> Callable[[], object]:
    return lambda: [to_model(r) for r in items]
