"""The sandbox is never the bottleneck: server cost of a 1000-entry searchset page vs a client's orjson parse.

Measured in-process (no sockets, no HTTP framing): ``EpicSandbox.handle`` for a fresh first-page search of
Derrick Lin's vital signs (filtering + session + byte join of cached entries), for a cached ``sessionID``
page, and for a cold first search on a new sandbox (every entry rendered); against ``orjson.loads`` of the
same bytes, which every client pays.

    python -m benchmarks sandbox         # or: python benchmarks/bench_sandbox.py
"""

from __future__ import annotations

import argparse
import time

import anyio
import orjson

from epic_fhir_async.sandbox import EpicSandbox
from epic_fhir_async.sandbox._http import Request

NAME = "sandbox"
DERRICK = "eq081-VQEgP8drUUqCWzHfw3"


def _request(sb: EpicSandbox, token: str, query: list[tuple[str, str]]) -> Request:
    headers = {"authorization": f"Bearer {token}", "accept": "application/fhir+json"}
    return Request("GET", f"{sb.config.root_path}/api/FHIR/R4/Observation", query=query, headers=headers)


def _per_call(n: int, seconds: float) -> float:
    return seconds / n * 1000.0


async def _run(repeat: int) -> None:
    sb = EpicSandbox(seed=0)
    token = sb.issue_token("bench-sandbox")
    query = [("patient", DERRICK), ("category", "vital-signs")]

    cold = EpicSandbox(seed=0)
    cold_token = cold.issue_token("bench-sandbox")
    start = time.perf_counter()
    first = await cold.handle(_request(cold, cold_token, query))
    cold_ms = (time.perf_counter() - start) * 1000.0

    start = time.perf_counter()
    for _ in range(repeat):
        first = await sb.handle(_request(sb, token, query))
    warm_ms = _per_call(repeat, time.perf_counter() - start)
    next_url = orjson.loads(first.body)["link"][1]["url"]
    session_query = [("sessionID", next_url.split("sessionID=", 1)[1])]
    start = time.perf_counter()
    for _ in range(repeat):
        await sb.handle(_request(sb, token, session_query))
    session_ms = _per_call(repeat, time.perf_counter() - start)

    start = time.perf_counter()
    for _ in range(repeat):
        orjson.loads(first.body)
    parse_ms = _per_call(repeat, time.perf_counter() - start)

    entries = len(orjson.loads(first.body)["entry"])
    print(f"page: {entries} entries, {len(first.body) / 1e6:.2f} MB")
    print(f"{'':38} {'ms/page':>8} {'x parse':>8}")
    for label, ms in (
        ("server, cold first page (new sandbox)", cold_ms),
        ("server, first page (search + session)", warm_ms),
        ("server, cached sessionID page", session_ms),
        ("client orjson.loads of the same page", parse_ms),
    ):
        print(f"{label:38} {ms:8.2f} {ms / parse_ms:8.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=30)
    # Every benchmark takes --quick (``python -m benchmarks -- --quick`` passes it to all of them).
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 30")
    args = parser.parse_args(argv)
    anyio.run(_run, 5 if args.quick else args.repeat)


if __name__ == "__main__":
    main()
