"""Crash-safe output of one shard, and the driver's merge into ``epic-fhir pull``'s layout.

The output directory ends up as ``epic-fhir pull`` leaves it: one ``<Type>.ndjson`` per resource type. While
the job runs, each shard writes into its own directory, ``<out>/.epic-fhir-fleet/shards/<n>/``, with the pull
command's writer (:class:`~epic_fhir_async.pull.NDJSONSink`: part files, a journal, spool files and a lock
file all in the shard's directory):

* a (patient, query) stream's resources reach ``<Type>.ndjson.part`` only once the pull marks the stream
  complete, and one journal line records it;
* a shard that starts again (its worker was killed and Dask ran it elsewhere, or the job is resumed) resumes
  from its journal: nothing is lost, nothing is written twice;
* the lock file (``flock``) keeps two runs of one shard from writing at once (a worker that Dask gave up on
  while it still ran); the kernel releases it when a process dies, even by SIGKILL;
* a finished shard writes ``done.json`` (counts and failed streams) with a rename, after its part files are
  flushed to disk; a shard that finds it (under the lock) returns it without a request.

The driver merges the shards in their order into ``<Type>.ndjson`` (written beside, flushed, then renamed:
a final file is never half-written) and removes the state directory unless some stream failed, in which
case a resumed job retries just those streams.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio

from .. import _json
from ..pull import NDJSONSink, PullItem

__all__ = ["STATE_DIR", "ShardOutcome", "ShardSink", "merge_shards", "shard_dir"]

STATE_DIR = ".epic-fhir-fleet"
DONE = "done.json"
_VERSION = 1


def shard_dir(out: Path, index: int) -> Path:
    return out / STATE_DIR / "shards" / f"{index:05d}"


@dataclass
class ShardOutcome:
    """What a finished shard wrote: resources per type, completed streams, and the streams that failed
    (``[patient id, query, error type, message]``: the message is the error's ``str``, which never holds a
    token or an OperationOutcome's diagnostics)."""

    counts: dict[str, int]
    streams: int
    failed: list[list[str]]

    def to_json(self) -> dict[str, Any]:
        return {"version": _VERSION, "counts": self.counts, "streams": self.streams, "failed": self.failed}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardOutcome:
        return cls(dict(data["counts"]), int(data["streams"]), [list(f) for f in data["failed"]])


class ShardSink:
    """One shard's output and checkpoint (the pull's ``checkpoint=``); see the module docstring."""

    def __init__(self, directory: Path, *, spill_bytes: int = 8 << 20) -> None:
        self.dir = directory
        self.output = NDJSONSink(directory, state_dir=directory, spill_bytes=spill_bytes, lock=True)

    @property
    def counts(self) -> dict[str, int]:
        """Committed resources per type, earlier runs of the shard included."""
        return self.output.total_counts

    @property
    def resources(self) -> int:
        return sum(self.counts.values())

    @property
    def streams_done(self) -> int:
        return self.output.streams_done

    # -- set-up --------------------------------------------------------------------------------------------
    async def open(self, *, retry_failed: bool) -> ShardOutcome | None:
        """Take the shard's lock and load its journal. Returns the stored outcome when the shard already
        finished (then nothing is to be done), unless ``retry_failed`` and some of its streams failed."""
        stored: ShardOutcome | None = None
        opened = False
        try:
            # Under the lock: a run that still writes (Dask gave up on its worker) may be about to finish.
            await self.output.acquire_lock()
            stored = await anyio.to_thread.run_sync(self._finished_sync, retry_failed)
            if stored is None:
                await self.output.open(resume=True)
                opened = True
        finally:
            if not opened:  # finished already, or failed to open: let go of the lock
                with anyio.CancelScope(shield=True):
                    await self.output.aclose()
        return stored

    def _finished_sync(self, retry_failed: bool) -> ShardOutcome | None:
        done = self.dir / DONE
        if not done.exists():
            return None
        outcome = ShardOutcome.from_json(_json.loads(done.read_bytes()))
        if retry_failed and outcome.failed:
            done.unlink()  # a resumed job retries the failed streams; the journal skips the others
            return None
        return outcome

    # -- the pull's checkpoint protocol -------------------------------------------------------------------
    def is_complete(self, patient_id: str, query: str) -> bool:
        return self.output.is_complete(patient_id, query)

    async def add(self, item: PullItem) -> None:
        await self.output.add(item)

    async def mark_complete(self, patient_id: str, query: str) -> None:
        await self.output.mark_complete(patient_id, query)

    async def mark_failed(self, patient_id: str, query: str) -> None:
        await self.output.mark_failed(patient_id, query)

    # -- the end -------------------------------------------------------------------------------------------
    async def finish(self, failed: list[list[str]]) -> ShardOutcome:
        """Record the finished shard (``done.json``, after its parts are on disk) and release the lock."""
        outcome = ShardOutcome(self.counts, self.streams_done, failed)
        try:
            await self.output.sync()
            await anyio.to_thread.run_sync(self._write_done_sync, outcome)
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()
        return outcome

    def _write_done_sync(self, outcome: ShardOutcome) -> None:
        tmp = self.dir / f".{DONE}.tmp"
        tmp.write_bytes(_json.dumps(outcome.to_json()))
        tmp.replace(self.dir / DONE)

    async def aclose(self) -> None:
        """Close files and release the lock; what was committed stays for the next run of the shard."""
        await self.output.aclose()


# -- the driver's side --------------------------------------------------------------------------------------


def read_outcome(out: Path, index: int) -> ShardOutcome | None:
    done = shard_dir(out, index) / DONE
    if not done.is_file():
        return None
    return ShardOutcome.from_json(_json.loads(done.read_bytes()))


def merge_shards(out: Path, shards: int) -> dict[str, Path]:
    """Concatenate every shard's part files, in shard order, into ``<out>/<Type>.ndjson`` (blocking I/O: run
    it in a thread). Each final file is written beside, flushed and renamed, so none is ever half-written."""
    staging = out / STATE_DIR / "merge"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    targets: dict[str, IO[bytes]] = {}
    try:
        for index in range(shards):
            for part in sorted(shard_dir(out, index).glob("*.ndjson.part")):
                rtype = part.name.removesuffix(".ndjson.part")
                target = targets.get(rtype)
                if target is None:
                    target = targets[rtype] = (staging / f"{rtype}.ndjson").open("wb")
                with part.open("rb") as src:
                    shutil.copyfileobj(src, target, 1 << 20)
        for target in targets.values():
            target.flush()
            os.fsync(target.fileno())
    finally:
        for target in targets.values():
            target.close()
    finals: dict[str, Path] = {}
    for rtype in sorted(targets):
        final = out / f"{rtype}.ndjson"
        (staging / f"{rtype}.ndjson").replace(final)
        finals[rtype] = final
    with contextlib.suppress(OSError):
        staging.rmdir()
    return finals
