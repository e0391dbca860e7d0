"""``epic-fhir pull ... --workers N | --scheduler ADDRESS [--redis URL]``: the same pull, on Dask workers.

    epic-fhir pull --base-url URL --client-id ID --key KEY.pem --patients ids.txt --out ./extract --workers 4 \\
        --redis redis://localhost:6379/0

The output directory is laid out as a single-process pull leaves it. The key is read by each worker from the
same path (``--key``), never sent to it; ``$EPIC_FHIR_ACCESS_TOKEN`` is read by each worker from its own
environment. One progress display for the whole job: shards, patients, resources and their rate, requests,
429s and token requests. Needs the ``fleet`` extra (``pip install 'epic-fhir-async[fleet]'``).
"""

from __future__ import annotations

import argparse
import sys
import time

import anyio
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from .. import ConfigurationError, EpicFHIRError
from ..fleet import (
    ClientSpec,
    FleetProgress,
    FleetResult,
    FleetUnavailable,
    KeyFileAuth,
    RedisSettings,
    TokenEnvAuth,
    fleet_pull,
)
from ._common import EXIT_FAILURE, EXIT_OK, TOKEN_ENV, CLIError, describe, positive_float, positive_int
from ._pull_display import print_run_facts, summary_table
from ._pull_patients import PatientSource


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "scale-out on Dask (the fleet extra)",
        "run the pull on Dask workers: --workers starts local worker processes, --scheduler uses a running "
        "cluster (the key must be at the --key path on every worker; --out must be one shared directory)",
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=positive_int, metavar="N", help="local worker processes (a LocalCluster)"
    )
    where.add_argument(
        "--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786"
    )
    group.add_argument(
        "--redis",
        metavar="URL",
        help="share one token per expiry and one rate budget across the workers (redis://host:6379/0)",
    )
    group.add_argument(
        "--shards", type=positive_int, metavar="N", help="patient shards (default 4 per worker)"
    )
    group.add_argument(
        "--requests-per-second",
        type=positive_float,
        metavar="R",
        help="the fleet's budget of requests per second (with --redis)",
    )


def wants_fleet(args: argparse.Namespace) -> bool:
    """Whether the pull runs on Dask (``--workers`` or ``--scheduler``)."""
    return getattr(args, "workers", None) is not None or getattr(args, "scheduler", None) is not None


def _spec(args: argparse.Namespace) -> ClientSpec:
    try:
        if args.client_id and args.key:
            auth: KeyFileAuth | TokenEnvAuth = KeyFileAuth(
                args.client_id,
                str(args.key.resolve()),
                token_url=args.token_url,
                password_env=args.password_env,
            )
        elif args.client_id or args.key:
            raise CLIError("--client-id and --key go together: give both")
        else:
            auth = TokenEnvAuth(TOKEN_ENV)
            auth.check()
        return ClientSpec(args.base_url, auth=auth)
    except ConfigurationError as exc:
        raise CLIError(str(exc)) from None


def _settings(args: argparse.Namespace) -> RedisSettings | None:
    if args.redis is None:
        if args.requests_per_second is not None:
            raise CLIError("--requests-per-second is a budget shared in Redis: give --redis URL as well")
        return None
    try:
        return RedisSettings(args.redis, requests_per_second=args.requests_per_second)
    except ConfigurationError as exc:
        raise CLIError(str(exc)) from None


class FleetDisplay:
    """The ``progress=`` callback of the fleet: one rich bar for the whole job (a plain line every
    ``plain_every`` seconds when the console is not a terminal). Called from the driver's thread."""

    def __init__(self, console: Console, *, plain_every: float = 10.0) -> None:
        self.console = console
        self.last: FleetProgress | None = None
        self._plain_every = plain_every
        self._next = time.monotonic() + plain_every
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]Pulling on {task.fields[workers]} worker(s)"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn("[cyan]{task.fields[patients]}[/] patients"),
                TextColumn("[green]{task.fields[resources]}[/] res {task.fields[rate]}/s"),
                TextColumn("requests {task.fields[requests]}"),
                TextColumn("[yellow]429s {task.fields[limited]}[/]"),
                TextColumn("tokens {task.fields[tokens]}"),
                TimeElapsedColumn(),
                console=console,
            )
            self._task = self._progress.add_task(
                "fleet",
                total=None,
                workers=0,
                patients=0,
                resources=0,
                rate=0,
                requests=0,
                limited=0,
                tokens=0,
            )

    def __enter__(self) -> FleetDisplay:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            if self.last is not None:
                self._apply(self.last)
            self._progress.stop()

    def __call__(self, p: FleetProgress) -> None:
        self.last = p
        if self._progress is not None:
            self._apply(p)
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._plain_every
            self.console.print(self.line(p), highlight=False, soft_wrap=True)

    @staticmethod
    def line(p: FleetProgress) -> str:
        return (
            f"Pulling on {p.workers} worker(s): {p.shards_done}/{p.shards_total} shards · "
            f"{p.patients_done}/{p.patients_total} patients · {p.resources:,} resources "
            f"({p.resources_per_second:,.0f}/s) · {p.requests:,} requests · 429s {p.rate_limited} · "
            f"token requests {p.token_requests} · {p.elapsed:.0f} s"
        )

    def _apply(self, p: FleetProgress) -> None:
        assert self._progress is not None
        self._progress.update(
            self._task,
            completed=p.shards_done,
            total=p.shards_total,
            workers=p.workers,
            patients=f"{p.patients_done}/{p.patients_total}",
            resources=f"{p.resources:,}",
            rate=f"{p.resources_per_second:,.0f}",
            requests=f"{p.requests:,}",
            limited=p.rate_limited,
            tokens=p.token_requests,
        )


async def run_fleet(args: argparse.Namespace, patients: PatientSource, console: Console) -> int:
    """``epic-fhir pull`` on Dask; the arguments are checked here and by the fleet before any request."""
    spec = _spec(args)
    settings = _settings(args)
    ids = [pid async for pid in patients]
    display = FleetDisplay(console)

    def run() -> FleetResult:  # blocking (Dask's client): in a worker thread
        return fleet_pull(
            spec,
            ids,
            args.types,
            args.out,
            workers=args.workers,
            scheduler=args.scheduler,
            shards=args.shards,
            concurrency=args.concurrency,
            expand=not args.no_expand,
            redis=settings,
            resume=args.resume,
            progress=display,
        )

    try:
        with display:
            result = await anyio.to_thread.run_sync(run)
    except FleetUnavailable as exc:
        raise CLIError(str(exc)) from None
    except ConfigurationError as exc:
        raise CLIError(str(exc)) from None
    except EpicFHIRError as exc:
        print(f"epic-fhir pull: {describe(exc, args.base_url)}", file=sys.stderr)
        return EXIT_FAILURE
    console.print(summary_table(result.counts, result.files, title=f"Pulled into {args.out}"))
    _print_facts(console, result)
    return EXIT_FAILURE if result.failures else EXIT_OK


def _print_facts(console: Console, result: FleetResult) -> None:
    p = result.progress
    resumed = (
        f" ({result.resumed_streams} streams resumed from checkpoints)" if result.resumed_streams else ""
    )
    console.print(
        f"{result.patients} patients in {result.shards} shards on {p.workers} worker(s){resumed} · "
        f"{sum(result.counts.values()):,} resources in {p.elapsed:.2f} s ({p.resources_per_second:,.0f}/s) · "
        f"{p.requests:,} requests · 429s {p.rate_limited} · token requests {p.token_requests}"
    )
    print_run_facts(console, None, result.failures, resumable=result.resumable)
