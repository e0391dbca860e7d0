"""What runs on a Dask worker: one event loop and one client per worker process, and the shard task.

Dask runs tasks in a thread pool. The first task of a job on a worker starts the job's *runtime*: an asyncio
loop in a thread of its own, and (on that loop, lazily) one :class:`~epic_fhir_async.EpicFHIRClient` built
from the job's :class:`ClientSpec`, with the Redis token cache and rate budget when the job has Redis. Every
shard task of the job on that worker hands its coroutine to that loop and waits for it: the connection pool,
the token and the budget are the worker's, however many shards it runs. The driver closes the runtime at the
end (:func:`close_job`) and cancels running shards when the job must stop (:func:`abort_job`).

A shard task never raises for an error of the job: it returns ``{"fatal": ...}``, so the driver decides once
(and Dask does not retry it). It raises only when it is cancelled. A worker killed mid-shard is Dask's to
handle: the task runs again elsewhere and the shard's checkpoint resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._errors import EpicFHIRError, PullError
from .._version import __version__
from ..pull import PullProgress
from ._budget import FleetTransport, ShardStats, SharedBudget, use_stats
from ._redis_conn import RedisSettings, connect
from ._sink import ShardSink, shard_dir
from ._spec import ClientSpec
from ._tokens import RedisTokenCache

if TYPE_CHECKING:
    import redis.asyncio

    from .. import EpicFHIRClient

__all__ = ["JobSpec", "abort_job", "close_job", "first_token", "preflight", "run_shard"]

T = TypeVar("T")


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs for the job's shards (picklable; no secret inside)."""

    job_id: str
    client: ClientSpec
    types: tuple[str, ...]
    expand: bool
    concurrency: int
    out: str
    redis: RedisSettings | None
    retry_failed: bool
    version: str = __version__
    progress_every: float = 0.5

    @property
    def topic(self) -> str:
        return f"epic-fhir-fleet-{self.job_id}"


class _Runtime:
    """A job's loop thread, client and Redis connection in this worker process."""

    def __init__(self, job: JobSpec) -> None:
        self.job = job
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"epic-fhir-fleet-{job.job_id}", daemon=True
        )
        self.thread.start()
        self.client: EpicFHIRClient | None = None
        self.redis: redis.asyncio.Redis | None = None
        self.scopes: set[anyio.CancelScope] = set()
        self._setup: asyncio.Lock | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the runtime's loop and wait for it (from a Dask task thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def get_client(self) -> EpicFHIRClient:
        if self._setup is None:
            self._setup = asyncio.Lock()
        async with self._setup:
            if self.client is None:
                self.client = await self._build()
            return self.client

    async def _build(self) -> EpicFHIRClient:
        spec = self.job.client
        settings = self.job.redis
        if settings is None:
            return spec.build(wrap=lambda inner: FleetTransport(inner, policy=spec.retry))
        self.redis = await connect(settings)
        leeway = getattr(spec.auth, "leeway", 60.0)
        tokens = RedisTokenCache(
            self.redis, prefix=settings.prefix, leeway=leeway, lock_ttl=settings.lock_ttl
        )
        budget = SharedBudget(
            self.redis,
            origin=_origin(spec.base_url),
            client_id=spec.client_id,
            requests_per_second=settings.requests_per_second,
            burst=settings.effective_burst,
            prefix=settings.prefix,
        )
        return spec.build(
            cache=tokens,
            wrap=lambda inner: FleetTransport(inner, budget=budget, policy=spec.retry),
        )

    def token_fetches(self) -> int:
        auth = self.client.auth if self.client is not None else None
        manager = getattr(auth, "token_manager", None)
        return int(getattr(manager, "fetches", 0))

    async def aclose(self) -> None:
        for scope in list(self.scopes):
            scope.cancel()
        if self.client is not None:
            await self.client.aclose()
        if self.redis is not None:
            await self.redis.aclose()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


_RUNTIMES: dict[str, _Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def _runtime(job: JobSpec) -> _Runtime:
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.get(job.job_id)
        if runtime is None:
            runtime = _RUNTIMES[job.job_id] = _Runtime(job)
        return runtime


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.partition('/')[0]}"


def _worker() -> Any:
    """This task's Dask worker (``None`` outside one: the shard function called directly)."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


# -- errors that cross processes --------------------------------------------------------------------------


def error_payload(exc: BaseException) -> dict[str, Any]:
    """A failure as the driver receives it: type, message (the error's ``str``, safe by the SDK's rules) and
    the error itself, pickled, when it survives the trip (an SDK error with keyword arguments may not)."""
    cause = exc
    if isinstance(exc, PullError) and exc.patient_id is None and exc.__cause__ is not None:
        cause = exc.__cause__  # "the pull stopped": what the caller wants is why
    blob: bytes | None = None
    if isinstance(cause, EpicFHIRError):
        try:
            blob = pickle.dumps(cause)
            pickle.loads(blob)  # noqa: S301 - our own bytes, just made
        except Exception:
            blob = None
    return {"type": type(cause).__name__, "message": str(cause), "error": blob}


# -- tasks the driver runs on workers ------------------------------------------------------------------------


async def preflight(job: JobSpec) -> dict[str, Any] | None:
    """``Client.run`` on every worker before the job (on the worker's own loop): what would fail, or ``None``.

    The SDK's version, the credentials (the key file is there and loads), the output directory (there or
    creatable: the workers write into it, so it must be the same shared directory everywhere) and Redis.
    """
    if job.version != __version__:
        return {
            "kind": "config",
            "message": f"the worker runs epic-fhir-async {__version__}, the driver {job.version}: install the "
            "same version everywhere",
        }
    try:
        job.client.check_on_worker()
    except EpicFHIRError as exc:
        return {"kind": "config", "message": str(exc)}
    problem = _writable(Path(job.out))
    if problem is not None:
        return {"kind": "config", "message": problem}
    if job.redis is not None:
        try:
            client = await connect(job.redis)
        except EpicFHIRError as exc:
            return {"kind": "redis", "message": str(exc)}
        await client.aclose()
    return None


def _writable(out: Path) -> str | None:
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"the output directory {out} cannot be created on this worker: {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"the output directory {out} is not writable on this worker ({probe})"
    return None


def first_token(job: JobSpec) -> dict[str, Any] | None:
    """Get the job's first token on this worker (stored in Redis for the others when the job has Redis): bad
    credentials then end the job once, before anything is written. ``None`` when it worked."""
    runtime = _runtime(job)

    async def main() -> None:
        client = await runtime.get_client()
        get_token = getattr(client.auth, "get_token", None)
        if get_token is not None:
            await get_token()

    try:
        runtime.run(main())
    except Exception as exc:
        return error_payload(exc)
    return None


def run_shard(job: JobSpec, index: int, patients: tuple[str, ...]) -> dict[str, Any]:
    """The Dask task: pull one shard's patients into its directory; see the module docstring."""
    worker = _worker()
    address = str(getattr(worker, "address", "local"))

    def emit(msg: dict[str, Any]) -> None:
        if worker is not None:
            worker.log_event(job.topic, msg)  # thread-safe in Dask: sent from the worker's own loop

    runtime = _runtime(job)
    return runtime.run(_shard(runtime, job, index, patients, address, emit))


async def _shard(
    runtime: _Runtime,
    job: JobSpec,
    index: int,
    patients: tuple[str, ...],
    address: str,
    emit: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    attempt = secrets.token_hex(4)
    stats = ShardStats()
    use_stats(stats)  # this task's context only (run_coroutine_threadsafe gives each shard its own)
    sink = ShardSink(shard_dir(Path(job.out), index))
    base = {"shard": index, "attempt": attempt, "worker": address, "patients": len(patients)}
    with anyio.CancelScope() as scope:
        runtime.scopes.add(scope)
        try:
            stored = await sink.open(retry_failed=job.retry_failed)
            if stored is not None:
                emit(
                    {
                        **base,
                        "done": True,
                        "resources": sum(stored.counts.values()),
                        "patients_done": len(patients),
                    }
                )
                return {"index": index, "outcome": stored.to_json(), "skipped": True}
            return await _pull_shard(runtime, job, patients, sink, stats, base, emit)
        except Exception as exc:
            return {"index": index, "fatal": error_payload(exc)}
        finally:
            runtime.scopes.discard(scope)
    return {"index": index, "aborted": True}


async def _pull_shard(
    runtime: _Runtime,
    job: JobSpec,
    patients: tuple[str, ...],
    sink: ShardSink,
    stats: ShardStats,
    base: dict[str, Any],
    emit: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    committed = sink.resources
    resumed = sink.streams_done
    next_report = 0.0

    def report(p: PullProgress | None, *, done: bool = False) -> None:
        emit(
            {
                **base,
                "done": done,
                "patients_done": len(patients) if done else (p.patients_done if p else 0),
                "resources": sink.resources if done else committed + (p.resources if p else 0),
                "requests": stats.requests,
                "rate_limited": stats.rate_limited,
                "token_fetches": runtime.token_fetches(),
            }
        )

    def progress(p: PullProgress) -> None:
        nonlocal next_report
        now = time.monotonic()
        if now >= next_report:
            next_report = now + job.progress_every
            report(p)

    finished = False
    try:
        client = await runtime.get_client()
        pull = client.pull(
            patients,
            job.types,
            concurrency=job.concurrency,
            expand=job.expand,
            on_error="collect",
            checkpoint=sink,
            progress=progress,
        )
        async with pull as stream:
            async for item in stream:
                await sink.add(item)
        failed = [[f.patient_id, f.query, type(f.error).__name__, str(f.error)] for f in stream.failures]
        outcome = await sink.finish(failed)
        finished = True
    finally:
        if not finished:
            with anyio.CancelScope(shield=True):
                await sink.aclose()
    report(None, done=True)
    return {"index": base["shard"], "outcome": outcome.to_json(), "skipped": False, "resumed": resumed}


async def close_job(job_id: str) -> dict[str, int] | None:
    """``Client.run`` at the end of a job: close this worker's runtime; its token fetches and requests."""
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.pop(job_id, None)
    if runtime is None:
        return None
    fetches = runtime.token_fetches()
    future = asyncio.run_coroutine_threadsafe(runtime.aclose(), runtime.loop)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.wrap_future(future), timeout=10)
    runtime.stop()
    return {"token_fetches": fetches}


def abort_job(job_id: str) -> None:
    """``Client.run`` when the job must stop: cancel this worker's running shards of it (they return)."""
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.get(job_id)
    if runtime is None:
        return
    for scope in list(runtime.scopes):
        runtime.loop.call_soon_threadsafe(scope.cancel)
