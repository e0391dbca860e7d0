"""``epic-fhir pull``: several resource types for many patients, concurrently, into NDJSON files.

    epic-fhir pull --base-url URL --client-id ID --key KEY.pem --patients ids.txt --types Condition Observation \\
        --out ./extract [--concurrency 8] [--resume]

One ``<Type>.ndjson`` per resource type, written crash-safely (see ``_pull_sink``); ``--resume`` continues
an interrupted pull from its journal without fetching completed streams again or duplicating a line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console

from .. import ConfigurationError, EpicFHIRClient, EpicFHIRError
from ..auth import EpicAuth
from ..pull import PullFailure, PullProgress
from ._common import (
    EXIT_FAILURE,
    EXIT_OK,
    CLIError,
    add_auth_arguments,
    backend_auth,
    describe,
    first_token,
    make_console,
    positive_int,
)
from ._pull_display import PullDisplay, print_run_facts, summary_table
from ._pull_patients import PatientSource
from ._pull_sink import NDJSONSink, OutputStateError, finished_files, resumable

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
    parser.set_defaults(func=run)


@dataclass
class PullReport:
    progress: PullProgress | None
    failures: list[PullFailure]
    counts: dict[str, int]
    files: dict[str, Path]
    resumable: bool = False  # the state was kept: --resume retries the failed streams


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
    """Run a pull into ``out`` with the live display; the sink is the pull's checkpoint.

    Nothing is written before the arguments are checked and the first token is granted; a pull that ends
    without completing a single stream leaves no state behind (there would be nothing to resume).
    """
    sink = NDJSONSink(out)
    display = PullDisplay(console, description)
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
        raise CLIError(str(exc)) from None
    await first_token(client.auth)
    await sink.open(resume=resume)
    if sink.resumed_streams:
        console.print(f"Resuming: {sink.resumed_streams} stream(s) already complete in {out}")
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
    return PullReport(display.last, list(stream.failures), dict(sink.counts), files, resumable(out))


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
    patients = PatientSource(args.patients)
    await patients.prepare()
    if not args.resume and resumable(args.out):  # checked again by the sink; here before any request
        raise CLIError(str(OutputStateError.for_directory(args.out)))
    if _already_complete(args.out, args.resume, console):
        return EXIT_OK
    auth = backend_auth(args)
    try:
        client = _client(args, auth)
    except ConfigurationError as exc:  # a malformed --base-url, or plain http:// off loopback
        raise CLIError(str(exc)) from None
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
        print(f"epic-fhir pull: {describe(exc, args.base_url)}", file=sys.stderr)
        _resume_hint(args.out)
        return EXIT_FAILURE
    except BaseException:  # Ctrl-C, a closed pipe: main() reports it; say what is kept
        _resume_hint(args.out)
        raise
    console.print(summary_table(report.counts, report.files, title=f"Pulled into {args.out}"))
    print_run_facts(console, report.progress, report.failures, resumable=report.resumable)
    return EXIT_FAILURE if report.failures else EXIT_OK


def _resume_hint(out: Path) -> None:
    if resumable(out):
        print(f"Completed streams are kept: re-run with --resume to continue in {out}", file=sys.stderr)
