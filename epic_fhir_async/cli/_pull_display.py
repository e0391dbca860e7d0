"""The live progress display and the end-of-pull summary table (rich), shared by ``pull`` and ``demo``."""

from __future__ import annotations

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
    movement: one plain line every ``plain_every`` seconds instead.
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
                TextColumn("[cyan]{task.fields[patients]}[/] patients"),
                TextColumn("[green]{task.fields[resources]}[/] res {task.fields[rate]}/s"),
                TextColumn("retries {task.fields[retries]}"),
                TextColumn("[red]errors {task.fields[errors]}[/]"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self._task: TaskID = self._progress.add_task(
                description, total=None, patients=0, resources=0, rate=0, retries=0, errors=0
            )

    def __enter__(self) -> PullDisplay:
        self._next = time.monotonic() + (0.0 if self._progress is not None else self._plain_every)
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
        total = p.streams_total if p.streams_total is not None else "?"
        return (
            f"{self.description}: {p.streams_finished}/{total} streams · {p.patients_done} patients · "
            f"{p.resources:,} resources · retries {p.retries if p.retries is not None else '-'} · "
            f"errors {p.streams_failed} · {p.elapsed:.0f} s"
        )

    def _apply(self, p: PullProgress) -> None:
        assert self._progress is not None
        rate = p.resources / p.elapsed if p.elapsed > 0 else 0.0
        self._progress.update(
            self._task,
            completed=p.streams_finished,
            total=p.streams_total,
            patients=p.patients_done,
            resources=f"{p.resources:,}",
            rate=f"{rate:,.0f}",
            retries=p.retries if p.retries is not None else "-",
            errors=p.streams_failed,
        )


def summary_table(counts: Mapping[str, int], files: Mapping[str, Path], *, title: str = "Pulled") -> Table:
    """Resources and files per type (file names only: the title names the directory, and full paths
    would be cut on an 80-column terminal)."""
    table = Table(title=title, title_justify="left")
    table.add_column("resource type")
    table.add_column("resources", justify="right")
    table.add_column("file")
    table.add_column("size", justify="right")
    total = 0
    for rtype in sorted(set(counts) | set(files)):
        path = files.get(rtype)
        size = _human_bytes(path.stat().st_size) if path is not None and path.exists() else "-"
        n = counts.get(rtype, 0)
        total += n
        table.add_row(rtype, f"{n:,}", path.name if path else "-", size)
    table.add_section()
    table.add_row("[bold]total", f"[bold]{total:,}", "", "")
    return table


def print_run_facts(
    console: Console, p: PullProgress | None, failures: Sequence[PullFailure], *, resumable: bool = True
) -> None:
    """One line of counters, then the failed streams (patient id and query: the operator may see them);
    ``resumable`` says whether the state was kept for ``--resume`` to retry them."""
    if p is not None:
        rate = p.resources / p.elapsed if p.elapsed > 0 else 0.0
        skipped = f", {p.streams_skipped} skipped (already complete)" if p.streams_skipped else ""
        console.print(
            f"{p.patients_done} patients · {p.streams_done} streams done{skipped} · {p.pages:,} pages · "
            f"{p.resources:,} resources in {p.elapsed:.2f} s ({rate:,.0f}/s) · "
            f"retries {p.retries if p.retries is not None else '-'} · errors {p.streams_failed}"
        )
    if failures:
        retry = "re-run with --resume to retry them" if resumable else "re-run to try again"
        console.print(f"[red]{len(failures)} stream(s) failed[/] ({retry}):")
        for f in failures[:10]:
            console.print(f"  patient {f.patient_id} · {f.query}: {type(f.error).__name__}: {f.error}")
        if len(failures) > 10:
            console.print(f"  ... and {len(failures) - 10} more")
