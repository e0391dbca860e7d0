"""``epic-fhir pull``: several resource types for many patients, concurrently, into NDJSON files.

    epic-fhir pull --base-url URL --client-id ID --key KEY.pem --patients ids.txt --types Condition Observation \\
        --out ./extract [--concurrency 8] [--resume]

One ``<Type>.ndjson`` per resource type, written crash-safely (``epic_fhir_async.pull.NDJSONSink``);
``--resume`` continues an interrupted pull from its journal without fetching completed streams again or
duplicating a line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console

from .. import ConfigurationError, EpicFHIRClient, EpicFHIRError
from ..auth import EpicAuth
from ..pull import NDJSONSink, PullFailure, PullProgress
from ._common import (
    ENVIRONMENT_HELP,
    EXIT_FAILURE,
    EXIT_OK,
    CLIError,
    add_auth_arguments,
    advice,
    backend_auth,
    check_out_dir,
    check_server_url,
    check_types,
    describe,
    first_token,
    make_console,
    plural,
    positive_int,
    prefix,
    retry_may_help,
)
from ._fleet import add_fleet_arguments, run_fleet, wants_fleet
from ._pull_display import PullDisplay, print_run_facts, report_failures, summary_table
from ._pull_patients import PatientSource
from ._pull_sink import OutputStateError, finished_files, resumable

DEFAULT_TYPES = ("Patient", "Condition", "Observation", "MedicationRequest", "Encounter")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="pull resource types for many patients concurrently into NDJSON files",
        description=(
            "Pull resource types for many patients concurrently into one NDJSON file per type. "
            "Bare types follow Epic's search rules: Observation becomes one search per category, "
            "Patient a read by _id. Everything local (the ids, the types, --out, the key) is checked before "
            "the first request."
        ),
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base-url", required=True, help="FHIR R4 base URL")
    add_auth_arguments(parser)
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
    parser.add_argument(
        "--concurrency", type=positive_int, default=8, metavar="N", help="searches in flight (default 8)"
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted pull in --out")
    parser.add_argument("--no-expand", action="store_true", help="use the templates verbatim (+ patient=)")
    parser.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first failed stream (default: collect and go on)",
    )
    add_fleet_arguments(parser)
    parser.set_defaults(func=run)


@dataclass
class PullReport:
    progress: PullProgress | None
    failures: list[PullFailure]
    counts: dict[str, int]  # resources written by this run, per type
    files: dict[str, Path]
    resumable: bool = False  # the state was kept: --resume retries the failed streams
    totals: dict[str, int] | None = None  # after --resume: the resources in each whole file


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
    plain_every: float = 10.0,
) -> PullReport:
    """Run a pull into ``out`` with the live display; the sink is the pull's checkpoint.

    Nothing is written before the arguments are checked and the first token is granted; a pull that ends
    without completing a single stream leaves no state behind (there would be nothing to resume).
    """
    sink = NDJSONSink(out)
    display = PullDisplay(console, description, plain_every=plain_every)
    try:
        pull = client.pull(
            patients,
            types,
            concurrency=concurrency,
            expand=expand,
            on_error="raise" if fail_fast else "collect",
            checkpoint=sink,
            progress=display,
        )
    except ConfigurationError as exc:  # a bad --types template or --concurrency: checked before any request
        raise CLIError(advice(str(exc))) from None
    await first_token(client.auth)
    if not resume and await anyio.to_thread.run_sync(resumable, out):  # the sink's refusal names resume=True
        raise OutputStateError.for_directory(out)
    await sink.open(resume=resume)
    if sink.resumed_streams:
        console.print(f"Resuming: {plural(sink.resumed_streams, 'stream')} already complete in {out}")
    finished = False
    try:
        with display:
            async with pull as stream:
                async for item in stream:
                    await sink.add(item)
        files = await sink.finish(keep_state=bool(stream.failures) and sink.has_progress)
        finished = True
    finally:
        with anyio.CancelScope(shield=True):
            if not finished:
                await sink.aclose()
            await sink.discard_if_empty()
    totals = await anyio.to_thread.run_sync(_count_lines, files) if sink.resumed_streams else None
    return PullReport(display.last, list(stream.failures), dict(sink.counts), files, resumable(out), totals)


def _count_lines(files: Mapping[str, Path]) -> dict[str, int]:
    """Resources per whole file (one per line): after ``--resume`` a file also holds earlier runs' lines."""
    counts: dict[str, int] = {}
    for rtype, path in files.items():
        n = 0
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
        counts[rtype] = n
    return counts


def _client(args: argparse.Namespace, auth: EpicAuth) -> EpicFHIRClient:
    """The client the command uses (a seam for tests: they swap in the sandbox transport)."""
    return EpicFHIRClient(args.base_url, auth=auth)


def _already_complete(out: Path, resume: bool, console: Console) -> bool:
    """Say so when ``out`` holds a finished pull; with ``--resume`` there is then nothing to do."""
    files = finished_files(out)
    if not files:
        return False
    names = ", ".join(p.name for p in files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    if resume:
        console.print(
            f"Already complete: {out} holds a finished pull ({names}); there is nothing to resume. "
            f"To pull again from scratch, run without --resume (the files are replaced) or choose a new --out."
        )
        return True
    console.print(
        f"Starting afresh in {out}, which holds a finished pull ({names}): files of the types pulled now "
        "are replaced, the others are left as they are."
    )
    return False


async def run(args: argparse.Namespace) -> int:
    console = make_console()
    check_server_url(args.base_url)
    check_types(args.types)
    patients = PatientSource(args.patients)
    await patients.prepare()
    await anyio.to_thread.run_sync(check_out_dir, args.out)
    if wants_fleet(args):  # --workers / --scheduler: the same pull on Dask workers
        return await run_fleet(args, patients, console)
    if not args.resume and resumable(args.out):  # checked again by the sink; here before any request
        raise CLIError(str(OutputStateError.for_directory(args.out)))
    if _already_complete(args.out, args.resume, console):
        return EXIT_OK
    auth = backend_auth(args)
    try:
        client = _client(args, auth)
    except ConfigurationError as exc:  # a malformed --base-url
        raise CLIError(advice(str(exc))) from None
    try:
        async with client:
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
        raise CLIError(str(exc)) from None
    except EpicFHIRError as exc:
        status = 2 if isinstance(exc, ConfigurationError) else EXIT_FAILURE
        raise CLIError(describe(exc, args.base_url) + _resume_hint(args.out, exc), status) from None
    except BaseException:  # Ctrl-C, a closed pipe: main() reports it; say what is kept
        if hint := _resume_hint(args.out):
            print(f"{prefix()}:{hint}", file=sys.stderr)
        raise
    print_summary(console, report, args.out)
    report_failures(report.failures, resumable=report.resumable)
    return EXIT_FAILURE if report.failures else EXIT_OK


def print_summary(console: Console, report: PullReport, out: Path, *, title: str | None = None) -> None:
    """The table of what was written, or a line saying nothing was (never a directory that does not exist)."""
    if report.files:
        title = title or f"Pulled into {out}"
        console.print(summary_table(report.counts, report.files, title=title, totals=report.totals))
    else:
        where = f"{out} holds no new file" if out.is_dir() else f"{out} was not created"
        console.print(f"No resources pulled: {where}.", highlight=False)
    print_run_facts(console, report.progress, resumed=report.totals is not None)


def _resume_hint(out: Path, exc: BaseException | None = None) -> str:
    """What is kept for ``--resume``, as the message's next line ("" when nothing is)."""
    if not resumable(out):
        return ""
    when = "" if exc is None or retry_may_help(exc) else " once the cause is fixed"
    return f"\n  completed streams are kept: re-run with --resume{when} to continue in {out}"
