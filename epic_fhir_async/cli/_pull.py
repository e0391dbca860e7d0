"""``epic-fhir pull``: several resource types for many patients, concurrently, into NDJSON files.

    epic-fhir pull --base-url URL --client-id ID --key KEY.pem --patients ids.txt --types Condition Observation \\
        --out ./extract [--concurrency 8] [--resume]

One ``<Type>.ndjson`` per resource type, written crash-safely (see ``_pull_sink``); ``--resume`` continues
an interrupted pull from its journal without fetching completed streams again or duplicating a line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console

from .._client import EpicFHIRClient
from .._errors import EpicFHIRError
from .._pull_types import PullFailure, PullProgress
from ..auth import BackendServicesAuth, EpicAuth, StaticTokenAuth
from ._pull_display import PullDisplay, print_run_facts, summary_table
from ._pull_sink import NDJSONSink, OutputStateError

DEFAULT_TYPES = ("Patient", "Condition", "Observation", "MedicationRequest", "Encounter")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="pull resource types for many patients concurrently into NDJSON files",
        description=(
            "Pull resource types for many patients concurrently into one NDJSON file per type. "
            "Bare types follow Epic's search rules: Observation becomes one search per category, "
            "Patient a read by _id."
        ),
    )
    parser.add_argument("--base-url", required=True, help="FHIR R4 base URL")
    parser.add_argument("--client-id", help="backend-services client id (with --key)")
    parser.add_argument("--key", type=Path, metavar="KEY.pem", help="private key of the client")
    parser.add_argument("--token-url", default=None, help="token endpoint (default: discovered)")
    parser.add_argument(
        "--patients",
        nargs="+",
        required=True,
        metavar="FILE|ID",
        help="patient FHIR ids, or files with one id per line (# comments allowed)",
    )
    parser.add_argument(
        "--types",
        nargs="+",
        default=list(DEFAULT_TYPES),
        metavar="T",
        help="resource types or query templates, e.g. Condition 'Observation?category=laboratory'",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument("--concurrency", type=int, default=8, help="searches in flight (default 8)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted pull in --out")
    parser.add_argument("--no-expand", action="store_true", help="use the templates verbatim (+ patient=)")
    parser.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first failed stream (default: collect and go on)",
    )
    parser.set_defaults(func=run)


@dataclass
class PatientSource:
    """Patient ids from arguments and files, read lazily; ``__length_hint__`` (counted up front) drives
    the progress bar's total without holding the ids in memory."""

    args: Sequence[str]
    count: int = 0
    _files: dict[str, bool] = field(default_factory=dict)

    async def prepare(self) -> None:
        def count() -> int:
            n = 0
            for arg in self.args:
                path = Path(arg)
                if path.is_file():
                    self._files[arg] = True
                    with path.open(encoding="utf-8") as f:
                        n += sum(1 for line in f if line.strip() and not line.lstrip().startswith("#"))
                else:
                    n += 1
            return n

        self.count = await anyio.to_thread.run_sync(count)

    def __length_hint__(self) -> int:
        return self.count

    async def __aiter__(self) -> AsyncIterator[str]:
        for arg in self.args:
            if not self._files.get(arg):
                yield arg
                continue
            async with await anyio.open_file(arg, encoding="utf-8") as f:
                async for line in f:
                    value = line.strip()
                    if value and not value.startswith("#"):
                        yield value


@dataclass
class PullReport:
    progress: PullProgress | None
    failures: list[PullFailure]
    counts: dict[str, int]
    files: dict[str, Path]


async def pull_to_directory(
    client: EpicFHIRClient,
    patients: Any,
    types: Sequence[str],
    out: Path,
    *,
    console: Console,
    concurrency: int = 8,
    resume: bool = False,
    expand: bool = True,
    fail_fast: bool = False,
    description: str = "Pulling",
) -> PullReport:
    """Run a pull into ``out`` with the live display; the sink is the pull's checkpoint."""
    sink = NDJSONSink(out)
    await sink.open(resume=resume)
    if sink.resumed_streams:
        console.print(f"Resuming: {sink.resumed_streams} stream(s) already complete in {out}")
    finished = False
    try:
        with PullDisplay(console, description) as display:
            async with client.pull(
                patients,
                types,
                concurrency=concurrency,
                expand=expand,
                on_error="raise" if fail_fast else "collect",
                checkpoint=sink,
                progress=display,
            ) as stream:
                async for item in stream:
                    await sink.add(item)
        files = await sink.finish(keep_state=bool(stream.failures))
        finished = True
    finally:
        if not finished:
            with anyio.CancelScope(shield=True):
                await sink.aclose()
    return PullReport(display.last, list(stream.failures), dict(sink.counts), files)


def _auth(args: argparse.Namespace) -> EpicAuth:
    if args.client_id and args.key:
        return BackendServicesAuth(args.client_id, args.key, token_url=args.token_url)
    token = os.environ.get("EPIC_FHIR_ACCESS_TOKEN")
    if token:
        return StaticTokenAuth(token)
    raise SystemExit("epic-fhir pull: give --client-id and --key (or set EPIC_FHIR_ACCESS_TOKEN)")


def _client(args: argparse.Namespace, auth: EpicAuth) -> EpicFHIRClient:
    """The client the command uses (a seam for tests: they swap in the sandbox transport)."""
    return EpicFHIRClient(args.base_url, auth=auth)


async def run(args: argparse.Namespace) -> int:
    console = Console(stderr=False)
    if args.concurrency < 1:
        print("epic-fhir pull: --concurrency must be at least 1", file=sys.stderr)
        return 2
    patients = PatientSource(args.patients)
    await patients.prepare()
    try:
        async with _client(args, _auth(args)) as client:
            report = await pull_to_directory(
                client,
                patients,
                args.types,
                args.out,
                console=console,
                concurrency=args.concurrency,
                resume=args.resume,
                expand=not args.no_expand,
                fail_fast=args.fail_fast,
            )
    except OutputStateError as exc:
        print(f"epic-fhir pull: {exc}", file=sys.stderr)
        return 2
    except EpicFHIRError as exc:
        print(f"epic-fhir pull: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"Completed streams are kept: re-run with --resume to continue in {args.out}", file=sys.stderr)
        return 1
    console.print(summary_table(report.counts, report.files, title=f"Pulled into {args.out}"))
    print_run_facts(console, report.progress, report.failures)
    return 1 if report.failures else 0
