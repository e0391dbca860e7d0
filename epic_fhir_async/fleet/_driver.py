"""The driver of a fleet pull: checks, the cluster, the shards, the progress, the merge.

:func:`fleet_pull` runs in the caller's thread and blocks (call it through ``anyio.to_thread.run_sync`` from
async code). In order, so that nothing is written and nothing is asked of the FHIR server before every check
has passed:

1. the arguments (shards, concurrency, types, patient ids) and the output directory's state;
2. Redis answers (from here), when the job has Redis;
3. the cluster: a new ``LocalCluster`` of ``workers`` processes, or the scheduler at ``scheduler`` (it must
   answer within ``connect_timeout`` and have a worker), or the caller's ``dask_client``;
4. on every worker: the same SDK version, the credentials readable there, the output directory writable
   there, Redis reachable from there;
5. the first token, on one worker (stored in Redis for the others): wrong credentials end the job here, once;
6. then the plan (which patients each shard has) is written, the shards run, and their output is merged.

A shard that reports a failure of the job (credentials, setup, a disk error) stops it: the other shards are
cancelled on their workers, and the error is raised once. A worker that dies is Dask's to replace; its shard
runs again and resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import math
import os
import pickle
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _json
from .._errors import ConfigurationError, EpicFHIRError
from ..pull import PullFailure, check_patient_id
from ..pull._queries import expand_queries
from ._errors import ClusterUnavailable, FleetError, FleetStreamError, RedisUnavailable
from ._redis_conn import RedisSettings, ping_blocking
from ._sink import STATE_DIR, ShardOutcome, merge_shards
from ._spec import ClientSpec
from ._worker import JobSpec, abort_job, close_job, first_token, preflight, run_shard

__all__ = ["FleetProgress", "FleetResult", "fleet_pull"]

logger = logging.getLogger("epic_fhir_async.fleet")

PLAN = "plan.json"
MANIFEST = "fleet-manifest.json"
_PULL_STATE = ".epic-fhir-pull"  # the single-process pull's journal directory (epic-fhir pull)
_VERSION = 1


@dataclass(frozen=True)
class FleetProgress:
    """A snapshot of the whole job, for a progress display (``progress=`` of :func:`fleet_pull`).

    ``requests`` counts every attempt sent by every worker (retries and token requests included),
    ``rate_limited`` the 429s they received, ``token_requests`` the token requests the workers made.
    """

    shards_total: int
    shards_done: int
    patients_total: int
    patients_done: int
    resources: int
    requests: int
    rate_limited: int
    token_requests: int
    workers: int
    elapsed: float

    @property
    def resources_per_second(self) -> float:
        return self.resources / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True)
class FleetResult:
    """What a finished fleet pull wrote and did.

    ``files`` and ``counts``: the merged ``<Type>.ndjson`` files and their resources. ``failures``: the
    streams that failed for their own reason, as ``on_error="collect"`` reports them (each ``error`` a
    :class:`FleetStreamError` with the worker's message and error type). ``resumable``: the job's state was
    kept (some stream failed), so ``resume=True`` retries just those. ``resumed_streams``: streams that a
    shard found already done in its checkpoint (a shard run again after its worker died, or a resumed job).
    ``progress`` is the last snapshot.
    """

    files: dict[str, Path]
    counts: dict[str, int]
    failures: list[PullFailure]
    shards: int
    patients: int
    resumable: bool
    manifest: Path
    progress: FleetProgress
    resumed_streams: int = 0


class _Board:
    """The workers' progress events, folded into one :class:`FleetProgress` (events arrive on Dask's thread)."""

    def __init__(self, shards: int, patients: int, workers: int) -> None:
        self._lock = threading.Lock()
        self._shards = shards
        self._patients = patients
        self.workers = workers
        self._latest: dict[int, tuple[float, dict[str, Any]]] = {}  # shard -> its newest event
        self._attempts: dict[tuple[int, str], dict[str, Any]] = {}  # requests of every run of every shard
        self.token_fetches: dict[str, int] = {}  # worker -> token requests of its runtime
        self.done: set[int] = set()
        self._start = time.monotonic()

    def handle(self, event: tuple[float, Mapping[str, Any]]) -> None:
        stamp, msg = event
        shard = int(msg["shard"])
        with self._lock:
            known = self._latest.get(shard)
            if known is None or stamp >= known[0]:
                self._latest[shard] = (stamp, dict(msg))
            self._attempts[(shard, str(msg["attempt"]))] = dict(msg)
            if "token_fetches" in msg:
                worker = str(msg["worker"])
                self.token_fetches[worker] = max(self.token_fetches.get(worker, 0), int(msg["token_fetches"]))

    def finished(self, shard: int, outcome: ShardOutcome, patients: int) -> None:
        with self._lock:
            self.done.add(shard)
            stamp = self._latest.get(shard, (0.0, {}))[0]
            msg = {**self._latest.get(shard, (0.0, {}))[1], "resources": sum(outcome.counts.values())}
            msg["patients_done"] = patients
            self._latest[shard] = (stamp, msg)

    def snapshot(self) -> FleetProgress:
        with self._lock:
            latest = [m for _, m in self._latest.values()]
            attempts = list(self._attempts.values())
            return FleetProgress(
                shards_total=self._shards,
                shards_done=len(self.done),
                patients_total=self._patients,
                patients_done=sum(int(m.get("patients_done", 0)) for m in latest),
                resources=sum(int(m.get("resources", 0)) for m in latest),
                requests=sum(int(m.get("requests", 0)) for m in attempts),
                rate_limited=sum(int(m.get("rate_limited", 0)) for m in attempts),
                token_requests=sum(self.token_fetches.values()),
                workers=self.workers,
                elapsed=time.monotonic() - self._start,
            )


def fleet_pull(
    client: ClientSpec,
    patients: Iterable[str],
    types: Iterable[str] | str,
    out: str | os.PathLike[str],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    dask_client: Any = None,
    shards: int | None = None,
    concurrency: int = 8,
    expand: bool = True,
    redis: str | RedisSettings | None = None,
    resume: bool = False,
    progress: Callable[[FleetProgress], object] | None = None,
    connect_timeout: float = 10.0,
) -> FleetResult:
    """Pull ``types`` for ``patients`` on a Dask cluster into ``out`` (``epic-fhir pull``'s layout).

    The cluster: ``workers`` local processes (a ``LocalCluster`` on 127.0.0.1, closed at the end; the
    default is one per CPU), or the scheduler at ``scheduler`` (``tcp://host:8786``), or your own
    ``dask_client``; give at most one. ``out`` must be the same directory on every worker (a shared volume
    on a real cluster). ``shards`` patient shards (default four per worker) run ``concurrency`` searches at
    once each. ``redis`` (a URL or :class:`RedisSettings`) shares one token per expiry and one rate budget
    across the workers; without it each worker has its own token and its own 429 pause. ``progress`` is
    called from this thread about four times a second. See the module docstring for what is checked first.
    """
    started = time.monotonic()
    settings = _settings(redis)
    queries, ids, shard_count = _check_arguments(
        client, patients, types, shards, concurrency, expand, workers
    )
    choices = [workers is not None, scheduler is not None, dask_client is not None]
    if sum(choices) > 1:
        raise ConfigurationError("give at most one of workers=, scheduler= and dask_client=")
    out = Path(out)
    plan = _existing_plan(out, resume)
    digest = _digest(ids, queries, expand)
    if plan is not None and plan["digest"] != digest:
        raise ConfigurationError(
            f"{out} holds an interrupted fleet pull of other patients or types: resume it with the same ones, or "
            f"remove {out / STATE_DIR} to start afresh"
        )
    if settings is not None:
        ping_blocking(settings)
    with _cluster(workers, scheduler, dask_client, connect_timeout) as dask:
        n_workers = len(dask.scheduler_info().get("workers", {}))
        job = JobSpec(
            job_id=uuid.uuid4().hex[:12],
            client=client,
            types=tuple(types) if not isinstance(types, str) else (types,),
            expand=expand,
            concurrency=concurrency,
            out=str(out.resolve()),
            redis=settings,
            retry_failed=plan is not None,
        )
        try:
            _preflight(dask, job)
            failure = dask.submit(first_token, job, pure=False).result()
            if failure is not None:
                raise _rebuild(failure, shard=None)
            if plan is None:
                count = shard_count or max(1, min(len(ids), 4 * max(1, n_workers)))
                plan = _write_plan(out, ids, count, digest)
            return _run(dask, job, plan, out, n_workers, progress, started)
        finally:
            with contextlib.suppress(Exception):
                dask.run(close_job, job.job_id, on_error="ignore")


def _settings(redis: str | RedisSettings | None) -> RedisSettings | None:
    if redis is None or isinstance(redis, RedisSettings):
        return redis
    if isinstance(redis, str):
        return RedisSettings(redis)
    raise ConfigurationError(f"redis= takes a URL or RedisSettings, got {type(redis).__name__}")


def _check_arguments(
    client: ClientSpec,
    patients: Iterable[str],
    types: Iterable[str] | str,
    shards: int | None,
    concurrency: int,
    expand: bool,
    workers: int | None,
) -> tuple[list[str], list[str], int | None]:
    if not isinstance(client, ClientSpec):
        raise ConfigurationError(
            f"fleet_pull needs a ClientSpec (how each worker builds its client), got {client!r}"
        )
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
        raise ConfigurationError(f"shards must be a positive number of patient shards, got {shards!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency must be a positive int, got {concurrency!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigurationError(
            f"workers must be a positive number of local worker processes, got {workers!r}"
        )
    labels = [q.label for q in expand_queries(types, expand)]  # a bad template fails here, before anything
    if isinstance(patients, str):
        raise ConfigurationError("patients must be an iterable of ids, not one string: use [patient_id]")
    seen: dict[str, None] = {}
    for pid in patients:
        seen.setdefault(check_patient_id(pid), None)
    if not seen:
        raise ConfigurationError("a fleet pull needs at least one patient id")
    return labels, list(seen), shards


def _digest(ids: list[str], queries: list[str], expand: bool) -> str:
    h = hashlib.sha256()
    for part in (*queries, str(expand), *ids):
        h.update(part.encode())
        h.update(b"\n")
    return h.hexdigest()


def _existing_plan(out: Path, resume: bool) -> dict[str, Any] | None:
    if (out / _PULL_STATE).exists():
        raise ConfigurationError(
            f"{out} holds an interrupted single-process pull (epic-fhir pull): finish it with --resume, or choose "
            "another output directory"
        )
    plan = out / STATE_DIR / PLAN
    if not plan.is_file():
        return None
    if not resume:
        raise ConfigurationError(
            f"{out} holds an interrupted fleet pull: pass resume=True (--resume) to continue it, or remove "
            f"{out / STATE_DIR}"
        )
    data: dict[str, Any] = _json.loads(plan.read_bytes())
    if data.get("version") != _VERSION:
        raise ConfigurationError(
            f"{plan} was written by another version of the fleet: remove {out / STATE_DIR}"
        )
    return data


def _write_plan(out: Path, ids: list[str], count: int, digest: str) -> dict[str, Any]:
    count = min(count, len(ids))
    size = math.ceil(len(ids) / count)
    shards = [ids[i : i + size] for i in range(0, len(ids), size)]
    plan = {"version": _VERSION, "digest": digest, "shards": shards}
    state = out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    tmp = state / f".{PLAN}.tmp"
    tmp.write_bytes(_json.dumps(plan))
    tmp.replace(state / PLAN)
    return plan


@contextlib.contextmanager
def _cluster(workers: int | None, scheduler: str | None, dask_client: Any, timeout: float) -> Iterator[Any]:
    distributed = _distributed()
    Client, LocalCluster = distributed.Client, distributed.LocalCluster
    if dask_client is not None:
        yield dask_client
        return
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterUnavailable(
                f"no Dask scheduler answered at {scheduler} within {timeout:g} s ({type(exc).__name__}): check the "
                "address (tcp://host:8786) and that the scheduler runs"
            ) from None
        try:
            try:
                client.wait_for_workers(1, timeout=timeout)
            except TimeoutError:
                raise ClusterUnavailable(
                    f"the Dask scheduler at {scheduler} has no worker (waited {timeout:g} s)"
                ) from None
            yield client
        finally:
            client.close()
        return
    count = workers if workers is not None else (os.cpu_count() or 1)
    cluster = LocalCluster(**local_cluster_options(count))
    try:
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def local_cluster_options(workers: int) -> dict[str, Any]:
    """``LocalCluster`` arguments for ``workers`` local processes: one thread each (a worker's pull runs on one
    event loop), on 127.0.0.1 only, no dashboard. The scheduler's HTTP routes still listen (Dask always
    starts them): on a free loopback port, so that a second cluster does not fight over port 8787."""
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
        "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"},
    }


def _distributed() -> Any:
    """The ``distributed`` module, typed loosely (much of its API has no annotations)."""
    try:
        return importlib.import_module("distributed")
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigurationError("a fleet pull needs Dask: pip install 'epic-fhir-async[fleet]'") from None


def _preflight(dask: Any, job: JobSpec) -> None:
    answers: dict[str, Any] = dask.run(preflight, job, on_error="return")
    for address, answer in sorted(answers.items()):
        if answer is None:
            continue
        if isinstance(answer, BaseException):
            raise FleetError(
                f"the check on worker {address} failed ({type(answer).__name__}): is epic-fhir-async[fleet] "
                "installed there?",
                error_type=type(answer).__name__,
            )
        message = f"worker {address}: {answer['message']}"
        if answer["kind"] == "redis":
            raise RedisUnavailable(message)
        raise ConfigurationError(message)


def _rebuild(payload: Mapping[str, Any], *, shard: int | None) -> EpicFHIRError:
    """The worker's error itself when it crossed processes, else a :class:`FleetError` carrying its text."""
    blob = payload.get("error")
    if blob is not None:
        with contextlib.suppress(Exception):
            error = pickle.loads(blob)  # noqa: S301 - bytes our own worker made
            if isinstance(error, EpicFHIRError):
                return error
    return FleetError(str(payload["message"]), error_type=str(payload["type"]), shard=shard)


def _run(
    dask: Any,
    job: JobSpec,
    plan: Mapping[str, Any],
    out: Path,
    n_workers: int,
    progress: Callable[[FleetProgress], object] | None,
    started: float,
) -> FleetResult:

    shards: list[list[str]] = plan["shards"]
    board = _Board(len(shards), sum(len(s) for s in shards), n_workers)
    dask.subscribe_topic(job.topic, board.handle)
    futures: dict[Any, int] = {
        dask.submit(run_shard, job, i, tuple(ids), key=f"epic-fhir-shard-{job.job_id}-{i}", pure=False): i
        for i, ids in enumerate(shards)
    }
    outcomes: dict[int, ShardOutcome] = {}
    resumed = 0
    finished = False
    try:
        pending = set(futures)
        while pending:
            for future in [f for f in pending if f.done()]:
                pending.discard(future)
                index = futures[future]
                result = _result(future, index)
                outcome = ShardOutcome.from_json(result["outcome"])
                outcomes[index] = outcome
                resumed += int(result.get("resumed", 0))
                board.finished(index, outcome, len(shards[index]))
            if progress is not None:
                progress(board.snapshot())
            if pending:
                time.sleep(0.25)
        finished = True
    finally:
        if not finished:
            with contextlib.suppress(Exception):
                dask.cancel(list(futures))
            with contextlib.suppress(Exception):
                dask.run(abort_job, job.job_id, on_error="ignore")
        with contextlib.suppress(Exception):
            dask.unsubscribe_topic(job.topic)
    with contextlib.suppress(Exception):
        closed = dask.run(close_job, job.job_id, on_error="ignore")
        for address, stats in closed.items():
            if stats:
                board.token_fetches[address] = max(
                    board.token_fetches.get(address, 0), stats["token_fetches"]
                )
    return _finish(out, shards, outcomes, board, started, resumed)


def _result(future: Any, index: int) -> dict[str, Any]:
    try:
        result: dict[str, Any] = future.result()
    except Exception as exc:  # KilledWorker (its workers kept dying), a cancelled task
        raise FleetError(
            f"shard {index} could not run: {type(exc).__name__}: {exc}",
            error_type=type(exc).__name__,
            shard=index,
        ) from None
    if "fatal" in result:
        raise _rebuild(result["fatal"], shard=index)
    if "aborted" in result:
        raise FleetError(f"shard {index} was cancelled on its worker", shard=index)
    return result


def _finish(
    out: Path,
    shards: list[list[str]],
    outcomes: dict[int, ShardOutcome],
    board: _Board,
    started: float,
    resumed: int,
) -> FleetResult:
    files = merge_shards(out, len(shards))
    counts: dict[str, int] = {}
    failures: list[PullFailure] = []
    for index in sorted(outcomes):
        outcome = outcomes[index]
        for rtype, n in outcome.counts.items():
            counts[rtype] = counts.get(rtype, 0) + n
        for patient_id, query, error_type, message in outcome.failed:
            error = FleetStreamError(message, error_type=error_type, shard=index)
            failures.append(PullFailure(patient_id, query, error))
    snapshot = board.snapshot()
    manifest = out / MANIFEST
    body = {
        "version": _VERSION,
        "files": {t: {"file": p.name, "resources": counts.get(t, 0)} for t, p in files.items()},
        "patients": sum(len(s) for s in shards),
        "shards": len(shards),
        "failed_streams": len(failures),
        "requests": snapshot.requests,
        "rate_limited": snapshot.rate_limited,
        "token_requests": snapshot.token_requests,
        "elapsed": round(time.monotonic() - started, 3),
    }
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_bytes(_json.dumps(body))
    tmp.replace(manifest)
    if not failures:
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    return FleetResult(
        files=files,
        counts=counts,
        failures=failures,
        shards=len(shards),
        patients=sum(len(s) for s in shards),
        resumable=bool(failures),
        manifest=manifest,
        progress=snapshot,
        resumed_streams=resumed,
    )
