"""Scenario C: download and parse a Bulk $export NDJSON output from the served sandbox.

The sandbox runs in a child process on 127.0.0.1 (its CPU is not ours) with the bulk server's synthetic
Observations (files of 3,000 resources, Epic's cap). One export is kicked off and every driver reads the same
files, in interleaved rounds (the driver order rotates each round). Printed in one run:

* throughput (MB/s, wall) and client CPU of: the SDK (``async with job.resources(concurrency=c)`` and
  ``async for`` over it, every resource parsed) at c=1 and at the default c=4; a raw ``httpx`` stream + hand
  split + ``orjson`` per line reading the files one after another (the issue's baseline); and the same raw
  loop run as 4 concurrent tasks (anyio task group + CapacityLimiter), the like-for-like baseline for c=4;
  and ``stream.batches()`` at the default c=4, each list walked;
* paired ratios SDK/raw (median and min..max over rounds; target throughput >= 0.85): single file at a time
  against the sequential raw loop, 4 files against the 4-task raw loop, and 4 files against the sequential
  raw loop; and what ``stream.batches()`` costs in CPU against ``async for`` over the same stream;
* the peak RSS of a fresh client process streaming a ~1 GB output through the SDK (target < 150 MB).

    python -m benchmarks bulk                 # 200 MB and 1 GB
    python -m benchmarks bulk -- --quick      # 40 MB and 200 MB
    python benchmarks/bench_bulk.py --mb 200 --memory-mb 1000 --rounds 7
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import resource
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx

from benchmarks.drivers import raw_ndjson_file
from epic_fhir_async import EpicFHIRClient, StaticTokenAuth
from epic_fhir_async.bulk._manifest import PollCadence

NAME = "bulk"
CLIENT_ID = "bench-bulk"
PER_FILE = 3000
TARGET_RATIO = 0.85
TARGET_RSS_MB = 150.0
FAST = PollCadence(initial=0.05, maximum=0.2, max_retry_after=0.2, min_delay=0.0)


# -- the server (child process) --------------------------------------------------------------------------
def _serve(conn: Any) -> None:
    anyio.run(_serve_forever, conn)


async def _serve_forever(conn: Any) -> None:
    from epic_fhir_async.sandbox import EpicSandbox
    from epic_fhir_async.sandbox._bulk_files import SyntheticObservations

    sb = EpicSandbox(seed=0, patients=1)
    sb.bulk.export_seconds = 0.0
    sb.bulk.synthetic_per_file = PER_FILE
    group = sb.bulk.dataset.group_id
    token = sb.issue_token(CLIENT_ID, lifetime=24 * 3600.0)
    sample = SyntheticObservations(list(sb.bulk.dataset.patient_ids), seed=0)
    line_bytes = sum(len(sample.line(i)) for i in range(1000)) / 1000
    async with sb.serve(host="127.0.0.1", port=0) as base_url:
        conn.send((base_url, token, group, line_bytes))
        while True:
            message = await anyio.to_thread.run_sync(conn.recv)
            if message == "stop":
                return
            sb.bulk.synthetic_observations = int(message)
            conn.send("ok")


class Server:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)

    def __enter__(self) -> Server:
        self._proc.start()
        self.base_url, self.token, self.group, self.line_bytes = self._conn.recv()
        return self

    def synthetic(self, megabytes: float) -> int:
        n = int(megabytes * 1e6 / self.line_bytes)
        self._conn.send(n)
        self._conn.recv()
        return n

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()


# -- the export (kicked off once, read by every driver) ------------------------------------------------------
async def _kick_off(base_url: str, token: str, group: str) -> tuple[str, list[str], int]:
    """Start an export and wait for it; returns (status URL, file URLs, resources per the manifest)."""
    async with EpicFHIRClient(base_url, auth=StaticTokenAuth(token)) as client:
        job = await client.bulk_export(group, types=["Observation"], cadence=FAST)
        manifest = await job.wait()
        return job.status_url, [f.url for f in manifest.outputs], sum(manifest.expected_counts().values())


async def _delete(base_url: str, token: str, status_url: str) -> None:
    async with EpicFHIRClient(base_url, auth=StaticTokenAuth(token)) as client:
        await client.bulk_export_job(status_url).delete()


# -- the drivers: each returns (resources, wall seconds, CPU seconds) of the streaming part only ---------------
async def sdk(base_url: str, token: str, status_url: str, concurrency: int) -> tuple[int, float, float]:
    """``async with job.resources(concurrency=c) as stream: async for resource in stream``."""
    async with EpicFHIRClient(base_url, auth=StaticTokenAuth(token)) as client:
        job = client.bulk_export_job(status_url, cadence=FAST)
        await job.wait()  # one status poll: the export is complete
        n = 0
        started, cpu = time.perf_counter(), time.process_time()
        async with job.resources(concurrency=concurrency) as stream:
            async for _resource in stream:
                n += 1
        return n, time.perf_counter() - started, time.process_time() - cpu


async def sdk_batches(base_url: str, token: str, status_url: str) -> tuple[int, float, float]:
    """``async with job.resources() as stream: async for batch in stream.batches()``, each list walked."""
    async with EpicFHIRClient(base_url, auth=StaticTokenAuth(token)) as client:
        job = client.bulk_export_job(status_url, cadence=FAST)
        await job.wait()
        n = 0
        started, cpu = time.perf_counter(), time.process_time()
        async with job.resources() as stream:
            async for batch in stream.batches():
                for _resource in batch:
                    n += 1
        return n, time.perf_counter() - started, time.process_time() - cpu


async def raw(token: str, urls: list[str], concurrency: int) -> tuple[int, float, float]:
    """The baseline: files one after another (``concurrency`` 1) or as that many concurrent tasks."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+ndjson"}
    total = 0
    started, cpu = time.perf_counter(), time.process_time()
    async with httpx.AsyncClient(timeout=60.0) as http:
        if concurrency == 1:
            for url in urls:
                total += await raw_ndjson_file(http, url, headers)
        else:
            limiter = anyio.CapacityLimiter(concurrency)

            async def one(url: str) -> None:
                nonlocal total
                async with limiter:
                    n = await raw_ndjson_file(http, url, headers)
                total += n  # not `total += await ...`: that reads `total` before the await

            async with anyio.create_task_group() as tg:
                for url in urls:
                    tg.start_soon(one, url)
    return total, time.perf_counter() - started, time.process_time() - cpu


# -- peak memory (a fresh process, so nothing measured before counts) ------------------------------------------
def _peak_rss_kb() -> int:
    """This process's peak RSS in KiB.

    ``ru_maxrss`` survives ``execve`` on Linux, so a "spawn" child started by a parent that already holds
    300 MB (after the search and pull benchmarks) reports the parent's size; ``VmHWM`` belongs to the new
    address space and starts again at exec.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # Linux: KiB; not reset at exec


def _memory_child(conn: Any, base_url: str, token: str, group: str) -> None:
    status_url, _, expected = anyio.run(_kick_off, base_url, token, group)
    n, seconds, _ = anyio.run(sdk, base_url, token, status_url, 4)
    peak_kb = _peak_rss_kb()
    anyio.run(_delete, base_url, token, status_url)
    conn.send((n, expected, seconds, peak_kb / 1024))


def _peak_rss(server: Server) -> tuple[int, int, float, float]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_memory_child, args=(child, server.base_url, server.token, server.group))
    proc.start()
    result = parent.recv()
    proc.join(30)
    return int(result[0]), int(result[1]), float(result[2]), float(result[3])


# -- reporting ---------------------------------------------------------------------------------------------
Run = Callable[[], Awaitable[tuple[int, float, float]]]
SDK1, SDK4 = "SDK job.resources(concurrency=1)", "SDK job.resources() (default 4)"
SDKB = "SDK stream.batches() (default 4)"
RAW1, RAW4 = "raw httpx+orjson, sequential", "raw httpx+orjson, 4 tasks"
#: (SDK driver, baseline, label): the single-file and multi-file comparisons the issue asks for.
PAIRS = [
    (SDK1, RAW1, "1 file at a time vs raw sequential"),
    (SDK4, RAW4, "4 files at once vs raw 4 tasks (like for like)"),
    (SDK4, RAW1, "4 files at once vs raw sequential"),
]


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_bulk", description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0, help="size of the throughput output (MB)")
    parser.add_argument("--memory-mb", type=float, default=1000.0, help="size of the memory output (MB)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians reported)")
    parser.add_argument("--quick", action="store_true", help="40 MB and 200 MB, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.mb, args.memory_mb, args.rounds = 40.0, 200.0, 2
    with Server() as server:
        server.synthetic(args.mb)
        status_url, urls, expected = anyio.run(_kick_off, server.base_url, server.token, server.group)
        mb = expected * server.line_bytes / 1e6
        print(
            f"output: ~{mb:.0f} MB in {len(urls)} files, {expected:,} synthetic Observations "
            f"({server.line_bytes:.0f} B/line avg); {args.rounds} interleaved rounds, medians"
        )
        base, token = server.base_url, server.token
        drivers: dict[str, Run] = {
            SDK1: lambda: sdk(base, token, status_url, 1),
            RAW1: lambda: raw(token, urls, 1),
            SDK4: lambda: sdk(base, token, status_url, 4),
            RAW4: lambda: raw(token, urls, 4),
            SDKB: lambda: sdk_batches(base, token, status_url),
        }
        anyio.run(drivers[SDK4])  # warm-up: imports, page cache, the server's synthetic pool
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in drivers}
        order = list(drivers)
        for round_ in range(max(1, args.rounds)):
            shift = round_ % len(order)  # rotate, so no driver always runs right after another
            for name in order[shift:] + order[:shift]:
                gc.collect()
                n, wall, cpu = anyio.run(drivers[name])
                if n != expected:
                    raise SystemExit(f"{name}: {n} resources, the manifest says {expected}")
                samples[name].append((wall, cpu))
        anyio.run(_delete, base, token, status_url)

        print(f"{'driver':36} {'wall s':>7} {'MB/s':>7} {'CPU s':>7} {'CPU s/100k':>11}")
        for name, values in samples.items():
            wall = statistics.median(w for w, _ in values)
            cpu = statistics.median(c for _, c in values)
            print(f"{name:36} {wall:7.2f} {mb / wall:7.1f} {cpu:7.2f} {cpu * 1e5 / expected:11.2f}")
        print(f"paired ratios SDK/raw, median (min..max); throughput is wall MB/s, target >= {TARGET_RATIO}")
        for sdk_name, raw_name, label in PAIRS:
            pairs = list(zip(samples[sdk_name], samples[raw_name], strict=True))
            throughput = [r[0] / s[0] for s, r in pairs]
            cpu_ratio = [r[1] / s[1] for s, r in pairs]
            verdict = "PASS" if statistics.median(throughput) >= TARGET_RATIO else "MISS"
            print(
                f"  {label:48} throughput {_spread(throughput)} {verdict}; "
                f"CPU efficiency {_spread(cpu_ratio)}"
            )
        lists = [b[1] / a[1] for a, b in zip(samples[SDK4], samples[SDKB], strict=True)]
        print(
            f"  stream.batches() / async for over the resources, CPU {_spread(lists)} (information, no target)"
        )

        server.synthetic(args.memory_mb)
        count, expected, seconds, peak = _peak_rss(server)
        if count != expected:
            raise SystemExit(f"memory run: {count} resources, the manifest says {expected}")
        verdict = "PASS" if peak < TARGET_RSS_MB else "MISS"
        print(
            f"memory: streamed {count:,} resources (~{args.memory_mb:.0f} MB) in {seconds:.1f} s; "
            f"peak RSS of the client process {peak:.0f} MB (target < {TARGET_RSS_MB:.0f}): {verdict}"
        )


if __name__ == "__main__":
    main()
