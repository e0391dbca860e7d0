"""``epic-fhir export``: a Bulk Data ``$export`` of a Group, polled to completion and downloaded.

    epic-fhir export --base-url URL --client-id ID --key KEY.pem --group ID [--types T...] --out DIR \\
        [--resume STATUS_URL] [--poll-interval S]

The status URL is printed (and saved as ``DIR/status-url.txt``) as soon as the kick-off is accepted, so a
crashed or interrupted run continues with ``--resume``; files already complete in ``DIR`` are not fetched
again. After a complete download the job is deleted on the server (Epic allows one export per client and
Group at a time, docs/epic-notes.md §4.2) unless ``--keep-on-server``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import BulkExportTooSoon, ConfigurationError, EpicFHIRClient, EpicFHIRError
from ..auth import EpicAuth
from ..bulk import (
    EPIC_SANDBOX_BULK_GROUP_ID,
    BulkDownloadResult,
    BulkExportJob,
    BulkProgress,
    BulkTransferStats,
    PollCadence,
)
from ._common import (
    EXIT_FAILURE,
    EXIT_TOO_SOON,
    CLIError,
    PlainProgress,
    add_auth_arguments,
    backend_auth,
    describe,
    make_console,
    positive_float,
    positive_int,
)

STATUS_FILE = "status-url.txt"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="run a Bulk Data $export of a Group and download its NDJSON files",
        description=(
            "Kick off a Group-level Bulk Data $export (Epic's only level), poll it to completion and download "
            "the NDJSON files into --out. The status URL is printed at once: resume with --resume."
        ),
    )
    parser.add_argument("--base-url", required=True, help="FHIR R4 base URL")
    add_auth_arguments(parser)
    parser.add_argument(
        "--group", default=EPIC_SANDBOX_BULK_GROUP_ID, help="Group FHIR id (default: Epic's sandbox Group)"
    )
    parser.add_argument("--types", nargs="+", metavar="T", help="resource types (Epic: always limit them)")
    parser.add_argument(
        "--type-filter",
        nargs="+",
        metavar="Q",
        help="_typeFilter queries, e.g. 'Observation?category=laboratory'",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument("--resume", metavar="STATUS_URL", help="continue watching an export already started")
    parser.add_argument(
        "--poll-interval",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="first poll delay, doubling (default 2)",
    )
    parser.add_argument(
        "--max-poll-interval",
        type=positive_float,
        default=600.0,
        metavar="S",
        help="longest poll delay (default 600)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="files downloaded at once (default 4)",
    )
    parser.add_argument("--keep-on-server", action="store_true", help="do not DELETE the job after download")
    parser.set_defaults(func=run)


def _client(args: argparse.Namespace, auth: EpicAuth) -> EpicFHIRClient:
    """The client the command uses (a seam for tests: they swap in the sandbox transport)."""
    return EpicFHIRClient(args.base_url, auth=auth)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


async def _run_job(
    job: BulkExportJob, args: argparse.Namespace, console: Console
) -> tuple[BulkDownloadResult, float]:
    started = anyio.current_time()
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    progress: Any = (
        Progress(*columns, console=console, transient=False)
        if console.is_terminal
        else PlainProgress(console)
    )
    with progress:
        server = progress.add_task("Server: waiting for the first poll", total=100)

        def on_poll(event: BulkProgress) -> None:
            text = event.text or "running (no X-Progress)"
            nxt = f", next poll in {event.next_poll:.3g} s" if event.next_poll else ""  # 0.25 s, 30 s, 120 s
            progress.update(
                server,
                completed=event.percent if event.percent is not None else 0,
                description=f"Server: {text} (poll {event.polls}{nxt})",
            )

        manifest = await job.wait(
            poll_interval=args.poll_interval, max_interval=args.max_poll_interval, progress=on_poll
        )
        progress.update(
            server, completed=100, description=f"Server: complete ({len(manifest.outputs)} files)"
        )
        stats = BulkTransferStats()
        file_count = len(manifest.outputs) + len(manifest.errors)
        files = progress.add_task("Files", total=file_count)

        def refresh() -> None:
            progress.update(
                files,
                completed=stats.files_done,
                description=(
                    # stats learns the total when the download starts; the first tick can come before it.
                    f"Files {stats.files_done}/{stats.files_total or file_count} · {_size(stats.bytes)} · "
                    f"{stats.resources:,} resources"
                ),
            )

        async with anyio.create_task_group() as tg:

            async def ticker() -> None:
                while True:
                    refresh()
                    await anyio.sleep(0.25)

            tg.start_soon(ticker)
            result = await job.download(args.out, concurrency=args.concurrency, stats=stats)
            tg.cancel_scope.cancel()
        refresh()
    return result, anyio.current_time() - started


def _summary(result: BulkDownloadResult, seconds: float) -> Table:
    table = Table(title=f"Exported into {result.directory}")
    table.add_column("type")
    table.add_column("files", justify="right")
    table.add_column("resources", justify="right")
    files: dict[str, int] = {}
    for f in result.files:
        files[f.ref.type] = files.get(f.ref.type, 0) + 1
    for rtype, count in sorted(result.counts().items()):
        table.add_row(rtype, str(files[rtype]), f"{count:,}")
    skipped = sum(f.skipped for f in result.files)
    table.caption = (
        f"{result.resources:,} resources in {len(result.files)} files ({skipped} already complete) · "
        f"{len(result.outcomes)} OperationOutcome(s) in {len(result.error_files)} error file(s) · {seconds:.1f} s"
    )
    return table


async def run(args: argparse.Namespace) -> int:
    console = make_console()
    auth = backend_auth(args)
    cadence = PollCadence(initial=args.poll_interval, maximum=max(args.poll_interval, args.max_poll_interval))
    status_url: str | None = args.resume
    try:
        client = _client(args, auth)
    except ConfigurationError as exc:  # a malformed --base-url, or plain http:// off loopback
        raise CLIError(str(exc)) from None
    try:
        async with client:
            if args.resume:
                job = client.bulk_export_job(args.resume, cadence=cadence)
            else:
                job = await client.bulk_export(
                    args.group, types=args.types, type_filters=args.type_filter, cadence=cadence
                )
            status_url = job.status_url
            # Plain print, flushed: never wrapped by rich, so it can be copied into --resume.
            print(f"Status URL: {job.status_url}", flush=True)
            await anyio.Path(args.out).mkdir(parents=True, exist_ok=True)
            await anyio.Path(args.out, STATUS_FILE).write_text(job.status_url + "\n")
            result, seconds = await _run_job(job, args, console)
            if not args.keep_on_server:
                await job.delete()
    except BulkExportTooSoon as exc:
        print(f"epic-fhir export: {exc}", file=sys.stderr)
        return EXIT_TOO_SOON
    except EpicFHIRError as exc:
        print(f"epic-fhir export: {describe(exc, args.base_url)}", file=sys.stderr)
        if status_url:
            print(f"Resume with: --resume {status_url}", file=sys.stderr)
        return EXIT_FAILURE
    except BaseException:  # Ctrl-C, a closed pipe: main() reports it; say how to continue
        if status_url:
            print(f"Resume with: --resume {status_url}", file=sys.stderr)
        raise
    console.print(_summary(result, seconds))
    for outcome in result.outcomes:
        for issue in outcome.issues:
            if issue.severity in ("fatal", "error", "warning"):
                console.print(
                    f"[yellow]{issue.severity}[/] {issue.code} {issue.epic_code or ''}: {issue.message}"
                )
    return 0
