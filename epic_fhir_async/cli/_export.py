"""``epic-fhir export``: a Bulk Data ``$export`` of a Group, polled to completion and downloaded; and the jobs it
started, inspected, released and listed.

    epic-fhir export --base-url URL --client-id ID --key KEY.pem --group ID [--types T...] --out DIR \\
        [--resume STATUS_URL] [--poll-interval S] [--cancel-on-error]
    epic-fhir export status STATUS_URL      # one poll: running, complete or gone
    epic-fhir export cancel STATUS_URL      # DELETE: frees Epic's one export slot per client and Group
    epic-fhir export list                   # the exports started here and not finished

Everything local is checked before the kick-off (the arguments and types, the base URL, the key, ``--out``
writable with some space free, no unfinished export of this machine in ``--out``): a job started on Epic holds
the client's one export slot for the Group until it is cancelled or expires (docs/epic-notes.md §4.2), so a
mistake found afterwards would lock the next export out. Once the kick-off is accepted, the status URL is
printed, saved as ``DIR/status-url.txt`` and recorded in the list of unfinished exports (``_export_state``);
a failure after that prints the exact commands that continue or release the job, or with
``--cancel-on-error`` cancels it. After a complete download the job is deleted on the server unless
``--keep-on-server``, and leaves the list.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import BulkExportError, BulkExportTooSoon, ConfigurationError, EpicFHIRClient, EpicFHIRError, NotFound
from ..auth import EpicAuth
from ..bulk import (
    EPIC_SANDBOX_BULK_GROUP_ID,
    BulkDownloadResult,
    BulkExportJob,
    BulkManifest,
    BulkProgress,
    BulkTransferStats,
    PollCadence,
)
from . import _export_state as state
from ._common import (
    ENVIRONMENT_HELP,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_TOO_SOON,
    CLIError,
    PlainProgress,
    add_auth_arguments,
    advice,
    backend_auth,
    check_out_dir,
    check_server_url,
    check_types,
    command_line,
    describe,
    failure_in,
    first_token,
    make_console,
    plural,
    positive_float,
    positive_int,
    prefix,
    retry_may_help,
    warn,
)

STATUS_FILE = "status-url.txt"
_CANCEL_TIMEOUT = 30.0  # seconds for the DELETE of --cancel-on-error, after the failure it follows

_ACTIONS_HELP = """\
actions on a job (the status URL the export printed):
  epic-fhir export status STATUS_URL   one poll: running, complete, or gone
  epic-fhir export cancel STATUS_URL   cancel it, freeing Epic's one export
                                       slot per client and Group
  epic-fhir export list                the exports started here, not finished
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="run a Bulk Data $export of a Group and download its NDJSON files; inspect or cancel a job",
        description=(
            "Kick off a Group-level Bulk Data $export (Epic's only level), poll it to completion and download "
            "the NDJSON files into --out. Everything local is checked before the kick-off. The status URL is "
            "printed at once and kept in the list of unfinished exports: continue with --resume STATUS_URL, "
            "release with `epic-fhir export cancel STATUS_URL`."
        ),
        epilog=_ACTIONS_HELP + "\n" + ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--base-url", help="FHIR R4 base URL (required; with --resume, taken from the list when omitted)"
    )
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
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output directory (required; with --resume, from the list)"
    )
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
    parser.add_argument(
        "--cancel-on-error",
        action="store_true",
        help="cancel the job on the server if this run fails after the kick-off (default: print the "
        "commands that continue or cancel it; Ctrl-C never cancels)",
    )
    parser.set_defaults(func=run)

    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    for name, func, text in (
        ("status", status, "poll a job once: running (with the server's progress), complete, or gone"),
        ("cancel", cancel, "cancel a job (DELETE its status URL): frees Epic's export slot for its Group"),
    ):
        sub = actions.add_parser(name, help=text, description=text, epilog=ENVIRONMENT_HELP)
        sub.add_argument("status_url", metavar="STATUS_URL", help="the status URL the export printed")
        _add_job_arguments(sub)
        sub.set_defaults(func=func, cli_name=f"export {name}")
    listing = actions.add_parser(
        "list",
        help="the exports started here and not finished",
        description=(
            "List the exports this command line started (or resumed) and did not finish: downloaded, "
            f"cancelled or found gone. Kept in {state.state_file()}."
        ),
    )
    listing.add_argument("--json", action="store_true", help="print the records as JSON")
    listing.set_defaults(func=list_exports, cli_name="export list")


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection flags of ``status`` and ``cancel``; without them, a job of the list uses its own.

    Their defaults are suppressed so that flags given before the action (``export --base-url U status ...``)
    are not overwritten by the action's parser.
    """
    none = argparse.SUPPRESS
    parser.add_argument(
        "--base-url", default=none, help="FHIR R4 base URL (default: from the list, or the URL)"
    )
    parser.add_argument(
        "--client-id", default=none, help="backend-services client id (default: from the list)"
    )
    parser.add_argument("--key", type=Path, default=none, metavar="KEY.pem", help="private key of the client")
    parser.add_argument(
        "--password-env", default=none, metavar="VAR", help="variable holding the key password"
    )
    parser.add_argument("--token-url", default=none, help="token endpoint (default: discovered)")


def _client(args: argparse.Namespace, auth: EpicAuth) -> EpicFHIRClient:
    """The client the command uses (a seam for tests: they swap in the sandbox transport)."""
    return EpicFHIRClient(args.base_url, auth=auth)


# -- settings: the flags, else the list's record of the job --------------------------------------------------
def _derived_base(status_url: str) -> str | None:
    # Epic's status URLs are <FHIR base>/BulkRequest/<id> (docs/epic-notes.md §4.2).
    head, sep, _ = status_url.partition("/BulkRequest/")
    return head if sep else None


def _settings(args: argparse.Namespace, record: state.ExportRecord | None, status_url: str | None) -> None:
    """Fill ``args`` (base URL, credentials, ``--out``) from the record of the job where flags are missing."""
    for name in ("base_url", "client_id", "key", "password_env", "token_url", "out"):
        if not hasattr(args, name):
            setattr(args, name, None)
    if status_url is not None:
        check_server_url(status_url, "--resume" if getattr(args, "resume", None) else "STATUS_URL")
    if record is not None:
        args.base_url = args.base_url or record.base_url
        if not (args.client_id or args.key) and record.client_id and record.key:
            args.client_id, args.key = record.client_id, Path(record.key)
            args.password_env = args.password_env or record.password_env
            args.token_url = args.token_url or record.token_url
        if args.out is None and record.out:
            args.out = Path(record.out)
    if not args.base_url and status_url:
        args.base_url = _derived_base(status_url)
    args.base_url = check_server_url(args.base_url)


def _client_for(args: argparse.Namespace) -> tuple[EpicFHIRClient, EpicAuth]:
    auth = backend_auth(args)
    try:
        return _client(args, auth), auth
    except ConfigurationError as exc:  # a malformed --base-url
        raise CLIError(advice(str(exc))) from None


def _job(client: EpicFHIRClient, status_url: str, cadence: PollCadence | None = None) -> BulkExportJob:
    check_server_url(status_url, "STATUS_URL")
    try:
        return client.bulk_export_job(status_url, cadence=cadence)
    except EpicFHIRError as exc:  # on another origin than --base-url (it would receive the token)
        raise CLIError(
            f"STATUS_URL: {advice(str(exc))}; give the --base-url of the server that started it"
        ) from None


def _record(args: argparse.Namespace, status_url: str) -> state.ExportRecord:
    key = str(Path(args.key).resolve()) if args.client_id and args.key else None
    return state.ExportRecord(
        status_url=status_url,
        base_url=args.base_url,
        started=state.now_iso(),
        out=str(Path(args.out).resolve()),
        group=None if args.resume else args.group,
        types=None if args.resume else args.types,
        client_id=args.client_id if key else None,
        key=key,
        token_url=args.token_url,
        password_env=args.password_env if key else None,
    )


def _remember(record: state.ExportRecord) -> bool:
    try:
        state.remember(record)
    except state.StateFileError as exc:
        warn(f"{exc}: this export is not in `epic-fhir export list`")
        return False
    return True


def _forget(status_url: str) -> None:
    try:
        state.forget(status_url)
    except state.StateFileError as exc:
        warn(str(exc))


# -- the export ----------------------------------------------------------------------------------------------
def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def _files_text(outputs: int, errors: int) -> str:
    """``8 files (7 output, 1 error)``: the same count the download's ``Files n/8`` line ends at."""
    text = plural(outputs + errors, "file")
    return f"{text} ({outputs:,} output, {errors:,} error)" if errors else text


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
        file_count = len(manifest.outputs) + len(manifest.errors)
        progress.update(
            server,
            completed=100,
            description=f"Server: complete, {_files_text(len(manifest.outputs), len(manifest.errors))}",
        )
        stats = BulkTransferStats()
        files = progress.add_task("Files", total=file_count)

        def refresh() -> None:
            progress.update(
                files,
                completed=stats.files_done,
                description=(
                    # stats learns the total when the download starts; the first tick can come before it.
                    f"Files {stats.files_done:,}/{stats.files_total or file_count:,} · {_size(stats.bytes)} · "
                    f"{plural(stats.resources, 'resource')}"
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


def _summary(result: BulkDownloadResult, seconds: float) -> tuple[Table, str]:
    """The table per type, and the totals as a line of their own (a caption would wrap to the table's width)."""
    table = Table(title=f"Exported into {result.directory}", title_justify="left")
    table.add_column("type")
    table.add_column("files", justify="right")
    table.add_column("resources", justify="right")
    files: dict[str, int] = {}
    for f in result.files:
        files[f.ref.type] = files.get(f.ref.type, 0) + 1
    for rtype, count in sorted(result.counts().items()):
        table.add_row(rtype, f"{files[rtype]:,}", f"{count:,}")
    skipped = sum(f.skipped for f in result.files)
    outcomes = plural(len(result.outcomes), "OperationOutcome")
    totals = (
        f"{plural(result.resources, 'resource')} in {plural(len(result.files), 'file')} "
        f"({skipped:,} already complete) · {outcomes} in {plural(len(result.error_files), 'error file')} · "
        f"{seconds:.1f} s"
    )
    return table, totals


def _check_out(out: Path, resume: str | None) -> None:
    """``--out`` can take the files (see :func:`check_out_dir`), and holds no export of this machine that is
    still unfinished (a new one would mix its files with the old one's and orphan the old job)."""
    check_out_dir(out, create=True)
    if resume:
        return
    try:
        previous = (out / STATUS_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return
    if previous and state.find(previous) is not None:
        raise CLIError(
            f"--out {out} holds an export started here and not finished ({previous}):\n"
            f"  continue it:  {command_line('export', '--resume', previous)}\n"
            f"  release it:   {command_line('export', 'cancel', previous)}\n"
            "  or choose another --out"
        )


def _leftover(status_url: str, args: argparse.Namespace, saved: bool, *, resumable: bool) -> str:
    """The exact commands that continue or release a job this run leaves on the server."""
    if saved:  # the list has the base URL, credentials and --out: the short forms work
        flags: list[str | Path | None] = []
    else:
        flags = ["--base-url", args.base_url]
        if args.client_id and args.key:
            flags += ["--client-id", args.client_id, "--key", args.key]
            flags += ["--token-url", args.token_url] if args.token_url else []
            flags += ["--password-env", args.password_env] if args.password_env else []
    lines = ["  the export is still on the server, holding Epic's one export slot for this client and Group:"]
    if resumable:
        out = [] if saved else ["--out", args.out]
        lines.append(f"    continue it:  {command_line('export', '--resume', status_url, *out, *flags)}")
    lines.append(f"    release it:   {command_line('export', 'cancel', status_url, *flags)}")
    return "\n".join(lines)


def _gone(exc: BaseException) -> bool:
    """Whether polling found the job gone (404/410): nothing is left to cancel or continue."""
    return isinstance(exc, BulkExportError) and isinstance(exc.__cause__, NotFound)


async def _failed(exc: BaseException, job: BulkExportJob, args: argparse.Namespace, saved: bool) -> CLIError:
    """The error a failure after the kick-off becomes, after cancelling the job (``--cancel-on-error``) or with
    the commands that continue or cancel it."""
    message = describe(exc, args.base_url)
    if _gone(exc):
        _forget(job.status_url)
        return CLIError(f"{message}\n  start a new export (without --resume)", EXIT_FAILURE)
    if args.cancel_on_error:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_TIMEOUT) as scope:
            try:
                await job.cancel()
            except EpicFHIRError as cancel_error:
                message += f"\n  --cancel-on-error: cancelling failed too: {describe(cancel_error)}"
            else:
                _forget(job.status_url)
                return CLIError(
                    f"{message}\n  the export was cancelled on the server (--cancel-on-error): its slot is free",
                    EXIT_FAILURE,
                )
        if scope.cancelled_caught:
            message += (
                f"\n  --cancel-on-error: the server did not answer the cancel within {_CANCEL_TIMEOUT:.0f} s"
            )
    local = isinstance(exc, OSError)  # fixed on this machine, then continued
    return CLIError(
        f"{message}\n{_leftover(job.status_url, args, saved, resumable=local or retry_may_help(exc))}",
        EXIT_FAILURE,
    )


def _too_soon(exc: BulkExportTooSoon, args: argparse.Namespace) -> CLIError:
    """Epic's "too recently", with the exports of this machine that may hold the slot and what to do."""
    when = f" Try again in {exc.retry_after:.0f} s." if exc.retry_after is not None else ""
    lines = [
        f"Epic refused the kick-off: this client exported Group {args.group} too recently, or an export of it "
        f"is still running (one at a time per client and Group).{when}"
    ]
    try:
        records = state.load()
    except state.StateFileError:
        records = []
    holding = [
        r
        for r in records
        if r.base_url == args.base_url
        and r.group in (args.group, None)
        and r.client_id in (args.client_id if args.key else None, None)
    ]
    for r in holding:
        lines.append(f"  started here and not finished: {r.status_url} (started {r.started})")
        lines.append(f"    release it:   {command_line('export', 'cancel', r.status_url)}")
        lines.append(f"    or continue:  {command_line('export', '--resume', r.status_url)}")
    if not holding:
        lines.append(
            "  no export of it started here is unfinished (epic-fhir export list); one started elsewhere is "
            "released with `epic-fhir export cancel STATUS_URL`, or wait for the window to pass"
        )
    return CLIError("\n".join(lines), EXIT_TOO_SOON)


async def run(args: argparse.Namespace) -> int:
    console = make_console()
    record = state.find(args.resume) if args.resume else None
    if args.resume:
        _settings(args, record, args.resume)
    else:
        args.base_url = check_server_url(args.base_url)
        check_types(args.types)
        check_types(args.type_filter, "--type-filter")
    if args.out is None:
        raise CLIError("--out DIR is required: the directory the files are written into")
    client, auth = _client_for(args)  # loads the key: before --out is created
    await anyio.to_thread.run_sync(_check_out, args.out, args.resume)
    cadence = PollCadence(initial=args.poll_interval, maximum=max(args.poll_interval, args.max_poll_interval))
    async with client:
        try:
            await first_token(auth)
            if args.resume:
                job = _job(client, args.resume, cadence)
            else:
                job = await client.bulk_export(
                    args.group, types=args.types, type_filters=args.type_filter, cadence=cadence
                )
        except BulkExportTooSoon as exc:
            raise _too_soon(exc, args) from None
        except EpicFHIRError as exc:  # no job on the server: nothing to continue or cancel
            status = 2 if isinstance(exc, ConfigurationError) else EXIT_FAILURE
            raise CLIError(describe(exc, args.base_url), status) from None
        # Recorded before anything can be interrupted: a plain call has no await for Ctrl-C's cancellation to
        # land on (a few hundred bytes written on the loop's thread, once).
        saved = _remember(_record(args, job.status_url))
        try:
            # Plain print, flushed: never wrapped by rich, so it can be copied into --resume.
            print(f"Status URL: {job.status_url}", flush=True)
            await anyio.Path(args.out, STATUS_FILE).write_text(job.status_url + "\n")
            result, seconds = await _run_job(job, args, console)
            if not args.keep_on_server:
                await job.delete()
        except BaseException as exc:
            failure = failure_in(exc)  # the download's task group wraps errors in a group
            if failure is not None:
                raise await _failed(failure, job, args, saved) from None
            # Ctrl-C, a closed pipe: main() reports it; say how to continue or release the job
            print(
                f"{prefix()}: {_leftover(job.status_url, args, saved, resumable=True).lstrip()}",
                file=sys.stderr,
            )
            raise
    await anyio.to_thread.run_sync(_forget, job.status_url)
    table, totals = _summary(result, seconds)
    console.print(table)
    console.print(totals, highlight=False, soft_wrap=True)
    for outcome in result.outcomes:
        for issue in outcome.issues:
            if issue.severity in ("fatal", "error", "warning"):
                console.print(
                    f"[yellow]{issue.severity}[/] {issue.code} {issue.epic_code or ''}: {issue.message}"
                )
    return EXIT_OK


# -- status, cancel, list ------------------------------------------------------------------------------------
def _started(record: state.ExportRecord | None) -> str:
    if record is None:
        return ""
    at = record.started_at
    if at is None:
        return f" · started {record.started}"
    minutes = int((datetime.now(timezone.utc) - at).total_seconds() // 60)
    ago = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    where = f" · into {record.out}" if record.out else ""
    return f" · started {record.started} ({ago} ago){where}"


@asynccontextmanager
async def _known_job(
    args: argparse.Namespace,
) -> AsyncIterator[tuple[state.ExportRecord | None, BulkExportJob]]:
    """The job at ``args.status_url``, with what the state file knows of it (its settings fill the flags)."""
    url = args.status_url
    record = await anyio.to_thread.run_sync(state.find, url)
    _settings(args, record, url)
    client, _ = _client_for(args)
    async with client:
        yield record, _job(client, url)


async def status(args: argparse.Namespace) -> int:
    url = args.status_url
    async with _known_job(args) as (record, job):
        try:
            result = await job.status()
        except NotFound:
            await anyio.to_thread.run_sync(_forget, url)
            print(f"gone: the server no longer has {url} (downloaded and deleted, cancelled, or expired)")
            return EXIT_FAILURE
        except EpicFHIRError as exc:
            raise CLIError(describe(exc, args.base_url), EXIT_FAILURE) from None
    resume = command_line("export", "--resume", url, *([] if record else ["--out", "DIR"]))
    if isinstance(result, BulkManifest):
        types = sorted({f.type for f in result.outputs})
        print(
            f"complete: {_files_text(len(result.outputs), len(result.errors))}"
            f"{' of ' + ', '.join(types) if types else ''}{_started(record)}"
        )
        print(f"  download it:  {resume}")
    else:
        progress = result.text or "no progress reported (Epic sends none)"
        print(f"running: {progress}{_started(record)}")
        print(f"  wait for it:  {resume}")
    print(f"  release it:   {command_line('export', 'cancel', url)}")
    return EXIT_OK


async def cancel(args: argparse.Namespace) -> int:
    url = args.status_url
    async with _known_job(args) as (_record, job):
        try:
            await job.cancel()  # a job already gone counts as cancelled
        except EpicFHIRError as exc:
            raise CLIError(describe(exc, args.base_url), EXIT_FAILURE) from None
    await anyio.to_thread.run_sync(_forget, url)
    print(f"cancelled: {url} is gone from the server; its export slot is free")
    return EXIT_OK


def list_exports(args: argparse.Namespace) -> int:
    try:
        records = state.load()
    except state.StateFileError as exc:
        raise CLIError(str(exc), EXIT_FAILURE) from None
    if args.json:
        print(json.dumps([vars(r) for r in records], indent=2))
        return EXIT_OK
    if not records:
        print(f"No unfinished exports started here (the list: {state.state_file()}).")
        return EXIT_OK
    print(f"{plural(len(records), 'export')} started here and not finished (the list: {state.state_file()}):")
    for r in records:
        what = " · ".join(
            part
            for part in (
                f"Group {r.group}" if r.group else "",
                ", ".join(r.types) if r.types else "",
            )
            if part
        )
        print(f"\n{r.status_url}")
        print(f"  {what or 'resumed'}{_started(r)}")
        print(f"  check:     {command_line('export', 'status', r.status_url)}")
        print(f"  continue:  {command_line('export', '--resume', r.status_url)}")
        print(f"  release:   {command_line('export', 'cancel', r.status_url)}")
    return EXIT_OK
