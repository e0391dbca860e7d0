"""The live progress display and the end-of-pull summary table (rich), shared by ``pull`` and ``demo``."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..pull import PullFailure, PullProgress
from ._common import describe, plural, prefix, retry_may_help

_REFRESH = 0.1  # seconds between display updates on page events


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class PullDisplay:
    """A ``progress=`` callback for ``client.pull`` that drives a rich progress bar.

    Shows streams done/total, patients done, resources and resources/s, retries and errors. When the
    console is not a terminal (piped, redirected to a log), there is no bar, which would need cursor
    movement: a plain line at the start, then one every ``plain_every`` seconds instead.
    """

    def __init__(self, console: Console, description: str = "Pulling", *, plain_every: float = 10.0) -> None:
        self.console = console
        self.description = description
        self.last: PullProgress | None = None
        self._next = 0.0
        self._plain_every = plain_every
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("[cyan]{task.fields[patients]}[/]"),
                TextColumn("[green]{task.fields[resources]}[/] res {task.fields[rate]}/s"),
                TextColumn("retries {task.fields[retries]}"),
                TextColumn("[red]errors {task.fields[errors]}[/]"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self._task: TaskID = self._progress.add_task(
                description, total=None, patients="0 patients", resources=0, rate=0, retries=0, errors=0
            )

    def __enter__(self) -> PullDisplay:
        self._next = time.monotonic()  # plain mode too: a first line at once, then one every plain_every
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is None:
            return  # plain mode: the run facts printed after the pull are the final line
        if self.last is not None:
            self._apply(self.last)
        self._progress.stop()

    def __call__(self, progress: PullProgress) -> None:
        self.last = progress
        now = time.monotonic()
        if self._progress is None:
            if progress.event != "finished" and now >= self._next:
                self._next = now + self._plain_every
                self.console.print(self._plain(progress), highlight=False, soft_wrap=True)
            return
        if progress.event == "page" and now < self._next:
            return
        self._next = now + _REFRESH
        self._apply(progress)

    def _plain(self, p: PullProgress) -> str:
        total = f"{p.streams_total:,}" if p.streams_total is not None else "?"
        return (
            f"{self.description}: {p.streams_finished:,}/{total} streams · {plural(p.patients_done, 'patient')} · "
            f"{plural(p.resources, 'resource')} · retries {p.retries if p.retries is not None else '-'} · "
            f"errors {p.streams_failed:,} · {p.elapsed:.0f} s"
        )

    def _apply(self, p: PullProgress) -> None:
        assert self._progress is not None
        rate = p.resources / p.elapsed if p.elapsed > 0 else 0.0
        self._progress.update(
            self._task,
            completed=p.streams_finished,
            total=p.streams_total,
            patients=plural(p.patients_done, "patient"),
            resources=f"{p.resources:,}",
            rate=f"{rate:,.0f}",
            retries=p.retries if p.retries is not None else "-",
            errors=p.streams_failed,
        )


def summary_table(
    counts: Mapping[str, int],
    files: Mapping[str, Path],
    *,
    title: str = "Pulled",
    totals: Mapping[str, int] | None = None,
) -> Table:
    """Resources and files per type (file names only: the title names the directory, and full paths
    would be cut on an 80-column terminal). ``totals``, after ``--resume``: the resources in each whole
    file, shown beside this run's counts (the file also holds what earlier runs wrote)."""
    table = Table(title=title, title_justify="left")
    table.add_column("resource type")
    table.add_column("this run" if totals is not None else "resources", justify="right")
    if totals is not None:
        table.add_column("in file", justify="right")
    table.add_column("file")
    table.add_column("size", justify="right")
    total = in_files = 0
    for rtype in sorted(set(counts) | set(files)):
        path = files.get(rtype)
        size = _human_bytes(path.stat().st_size) if path is not None and path.exists() else "-"
        n = counts.get(rtype, 0)
        total += n
        row = [rtype, f"{n:,}"]
        if totals is not None:
            in_files += totals.get(rtype, 0)
            row.append(f"{totals.get(rtype, 0):,}")
        table.add_row(*row, path.name if path else "-", size)
    table.add_section()
    last = ["[bold]total", f"[bold]{total:,}"] + ([f"[bold]{in_files:,}"] if totals is not None else [])
    table.add_row(*last, "", "")
    return table


def print_run_facts(
    console: Console,
    p: PullProgress | None,
    failures: Sequence[PullFailure] = (),
    *,
    resumable: bool = True,
    resumed: bool = False,
) -> None:
    """One line of counters (``resumed``: the counts are this run's, after ``--resume``), then the failed
    streams on stderr (:func:`report_failures`; ``resumable``: the state was kept for ``--resume``)."""
    if p is not None:
        _counters(console, p, resumed)
    report_failures(failures, resumable=resumable)


def _counters(console: Console, p: PullProgress, resumed: bool) -> None:
    rate = p.resources / p.elapsed if p.elapsed > 0 else 0.0
    skipped = f", {p.streams_skipped:,} skipped (already complete)" if p.streams_skipped else ""
    console.print(
        f"{plural(p.patients_done, 'patient')} · {p.streams_done:,} of {plural(p.streams_finished, 'stream')} "
        f"done{skipped} · {plural(p.pages, 'page')} · {plural(p.resources, 'resource')} in {p.elapsed:.2f} s "
        f"({rate:,.0f}/s){' this run' if resumed else ''} · retries {p.retries if p.retries is not None else '-'} "
        f"· errors {p.streams_failed:,}",
        highlight=False,
    )


def report_failures(failures: Sequence[PullFailure], *, resumable: bool, limit: int = 10) -> None:
    """The failed streams on stderr (patient id and query: the operator may see them), each with what went
    wrong in CLI terms; a retry is suggested only when it may help (not for a 400, 403 or 404)."""
    if not failures:
        return
    lines = [f"{prefix()}: {plural(len(failures), 'stream')} failed:"]
    for f in failures[:limit]:
        text = describe(f.error).replace("\n  ", "\n    ")
        lines.append(f"  patient {f.patient_id} · {f.query}: {text}")
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit:,} more")
    transient = sum(retry_may_help(f.error) for f in failures)
    permanent = len(failures) - transient
    how = "re-run with --resume to retry them" if resumable else "re-run to try them again"
    fix = "their cause is fixed (a patient id, a type or query, the client's access)"
    if permanent == 0:
        lines.append(f"  a retry may help (connection, timeout, 429, 5xx): {how}")
    elif transient == 0:
        lines.append(f"  a retry fails the same way until {fix}")
    else:
        lines.append(
            f"  {transient:,} may succeed on a retry (connection, timeout, 429, 5xx): {how}; the other "
            f"{permanent:,} fail the same way until {fix}"
        )
    print("\n".join(lines), file=sys.stderr, flush=True)
