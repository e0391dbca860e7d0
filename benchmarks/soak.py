"""Soak: pulls and bulk exports against the sandbox on 127.0.0.1 with every fault switched on.

    nox -s soak                                  # default length (90 s), exits non-zero on any loss or leak
    python -m benchmarks.soak --seconds 20 --patients 10 [--backend trio] [--in-process]

One client (one pool, one token manager, one 429 gate) runs pull rounds (every patient x ``QUERIES``) and bulk
export rounds (kick-off, polling, concurrent NDJSON streaming, delete) side by side until ``--seconds`` have
passed, while the sandbox answers with 5xx pages, 429 + ``Retry-After``, connections cut mid-body, latency
and latency spikes, Epic's bare-400 token flakes and 5-second tokens, and every paging session is expired
every ``--expire-every`` seconds (Epic's 4113). Each round is compared with the same round against a
fault-free in-process sandbox of the same seed: a resource missing is *lost*, one delivered twice
*duplicated*, one not expected *unexpected*. After shutdown, sockets and tasks left over are *leaked*.

Not a benchmark (nothing is timed against anything) and not part of ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from benchmarks._soak_report import SoakReport, count_sdk_logs, open_sockets, peak_rss_mb, running_tasks
from epic_fhir_async import BackendServicesAuth, EpicFHIRClient, EpicFHIRError
from epic_fhir_async._retry import RetryPolicy
from epic_fhir_async.auth import generate_private_key, public_jwks
from epic_fhir_async.bulk._manifest import PollCadence
from epic_fhir_async.sandbox import EpicSandbox, SandboxFaults

CLIENT_ID = "soak-client"
QUERIES = ["Condition", "Observation?category=vital-signs", "Observation?category=laboratory", "Encounter"]
BULK_TYPES = ["Patient", "Condition", "Observation", "Encounter"]

PullKey = tuple[str, str, str]  # patient, query, resource id
BulkKey = tuple[str, str]  # resource type, id
Expected = tuple[list[str], str, Counter[PullKey], Counter[BulkKey]]  # patients, group, pull, bulk


def default_faults() -> SandboxFaults:
    """Every fault on, at rates far above Epic's (per request; a token flake per 17 token requests).

    Margins: a request fails only after 8 failed attempts (~0.08**8 at these rates), a token refresh only
    after 4 flakes in a row (two attempts while the old token still works, two after it expired).
    """
    return SandboxFaults(
        latency=0.002,
        error_rate=0.04,
        rate_limit_rps=120.0,
        drop_rate=0.03,
        token_flake_rate=0.06,
        latency_spike_rate=0.01,
        latency_spike=0.5,
    )


@dataclasses.dataclass
class SoakOptions:
    """How long and how hard to soak; durations in seconds."""

    seconds: float = 90.0
    patients: int = 30
    seed: int = 7
    concurrency: int = 8
    page_size: int = 50
    token_lifetime: float = 5.0
    expire_every: float = 10.0
    export_seconds: float = 1.0
    served: bool = True
    bulk: bool = True
    faults: SandboxFaults = dataclasses.field(default_factory=default_faults)
    # 8 attempts, not the default 5: the injected rates are ~100x Epic's, and a long job would raise it too.
    retry: RetryPolicy = dataclasses.field(default_factory=lambda: RetryPolicy(max_attempts=8))
    cadence: PollCadence = dataclasses.field(
        default_factory=lambda: PollCadence(initial=0.2, maximum=1.0, max_retry_after=1.0, min_delay=0.05)
    )


def _sandbox(opts: SoakOptions) -> EpicSandbox:
    sb = EpicSandbox(
        seed=opts.seed,
        patients=opts.patients,
        token_lifetime=opts.token_lifetime,
        page_size=opts.page_size,
        export_seconds=opts.export_seconds,
    )
    sb.bulk.resources_per_file = 100  # many files per export: drops land mid-file and files resume
    return sb


@asynccontextmanager
async def _client(sb: EpicSandbox, opts: SoakOptions, *, served: bool) -> AsyncIterator[EpicFHIRClient]:
    key = generate_private_key("ES384")
    sb.register_client(CLIENT_ID, public_jwks(key))
    if served:
        async with sb.serve(host="127.0.0.1", port=0) as base_url:
            auth = BackendServicesAuth(CLIENT_ID, key, token_url=sb.token_url)
            async with EpicFHIRClient(base_url, auth=auth, retry=opts.retry) as client:
                yield client
    else:
        auth = BackendServicesAuth(CLIENT_ID, key, token_url=sb.token_url)
        async with EpicFHIRClient(
            sb.base_url, auth=auth, transport=sb.transport(), retry=opts.retry
        ) as client:
            yield client


async def _pull(
    client: EpicFHIRClient, patients: list[str], opts: SoakOptions, got: Counter[PullKey]
) -> None:
    async with client.pull(patients, QUERIES, concurrency=opts.concurrency) as stream:
        async for item in stream:
            got[(item.patient_id, item.query, str(item.resource.get("id")))] += 1


async def _bulk(client: EpicFHIRClient, group_id: str, opts: SoakOptions, got: Counter[BulkKey]) -> None:
    async with client.bulk_export(group_id, types=BULK_TYPES, cadence=opts.cadence) as job:
        await job.wait()
        async with job.resources() as stream:
            async for resource in stream:
                got[(str(resource.get("resourceType")), str(resource.get("id")))] += 1
        await job.delete()


async def _expected(opts: SoakOptions) -> Expected:
    """The same pull and export against a fault-free in-process sandbox of the same seed."""
    sb = _sandbox(opts)
    patients = list(sb.dataset.patient_ids)
    pulled: Counter[PullKey] = Counter()
    exported: Counter[BulkKey] = Counter()
    async with _client(sb, opts, served=False) as client:
        await _pull(client, patients, opts, pulled)
        if opts.bulk:
            await _bulk(client, sb.dataset.group_id, opts, exported)
    return patients, sb.dataset.group_id, pulled, exported


def _compare(report: SoakReport, expected: Counter[Any], got: Counter[Any]) -> None:
    report.expected += sum(expected.values())
    report.received += sum(got.values())
    report.lost += sum((expected - got).values())
    report.duplicated += sum(n - 1 for k, n in got.items() if n > 1 and k in expected)
    report.unexpected += sum(n for k, n in got.items() if k not in expected)


async def _rounds(
    name: str,
    deadline: float,
    run: Callable[[Counter[Any]], Awaitable[None]],
    expected: Counter[Any],
    report: SoakReport,
) -> None:
    while anyio.current_time() < deadline:
        got: Counter[Any] = Counter()
        try:
            await run(got)
        except EpicFHIRError as exc:
            # A typed error ends the round; what it did not deliver counts as lost.
            report.errors.append(f"{name} round {report.rounds[name] + 1}: {type(exc).__name__}: {exc}")
        report.rounds[name] += 1
        _compare(report, expected, got)


async def _soak(sb: EpicSandbox, opts: SoakOptions, expected: Expected, report: SoakReport) -> None:
    patients, group_id, pull_expected, bulk_expected = expected
    async with _client(sb, opts, served=opts.served) as client:
        auth = client.auth
        assert isinstance(auth, BackendServicesAuth)
        await auth.get_token()  # the first token is set-up, not soak: faults start after it
        for name, value in dataclasses.asdict(opts.faults).items():
            setattr(sb.faults, name, value)
        deadline = anyio.current_time() + opts.seconds

        async def pull(got: Counter[PullKey]) -> None:
            await _pull(client, patients, opts, got)

        async def bulk(got: Counter[BulkKey]) -> None:
            await _bulk(client, group_id, opts, got)

        async def expire_sessions() -> None:
            while True:
                await anyio.sleep(opts.expire_every)
                sb.expire_sessions()
                report.expiry_sweeps += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(expire_sessions)
            async with anyio.create_task_group() as rounds:
                rounds.start_soon(_rounds, "pull", deadline, pull, pull_expected, report)
                if opts.bulk:
                    rounds.start_soon(_rounds, "bulk", deadline, bulk, bulk_expected, report)
            tg.cancel_scope.cancel()  # stops the expiry sweeps
        report.retries = int(getattr(getattr(client.http, "_transport", None), "retries", 0))
        report.token_fetches = auth.token_manager.fetches


async def run_soak(opts: SoakOptions) -> SoakReport:
    """Run the soak and return its report (``report.ok`` when nothing was lost, duplicated or leaked)."""
    expected = await _expected(opts)
    report = SoakReport(seconds=opts.seconds, served=opts.served)
    sockets_before, tasks_before = open_sockets(), running_tasks()
    sb = _sandbox(opts)
    started = time.monotonic()
    with count_sdk_logs(report.log_records):
        await _soak(sb, opts, expected, report)
    report.elapsed = time.monotonic() - started
    report.stats = dict(sb.stats)
    await anyio.sleep(0.05)  # let closed sockets and finished tasks be reaped
    report.leaked_sockets = max(0, open_sockets() - sockets_before)
    report.leaked_tasks = max(0, running_tasks() - tasks_before)
    report.peak_rss_mb = peak_rss_mb()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    defaults = SoakOptions()
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="length (default 90)")
    parser.add_argument("--patients", type=int, default=defaults.patients, help="generated patients (30)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--expire-every", type=float, default=defaults.expire_every)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--in-process", action="store_true", help="in-process transport instead of sockets")
    parser.add_argument("--no-bulk", action="store_true", help="pull rounds only")
    args = parser.parse_args(argv)
    opts = SoakOptions(
        seconds=args.seconds,
        patients=args.patients,
        seed=args.seed,
        concurrency=args.concurrency,
        expire_every=args.expire_every,
        served=not args.in_process,
        bulk=not args.no_bulk,
    )
    report = anyio.run(run_soak, opts, backend=args.backend)
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
