"""Crash-safe output of one shard, and the driver's merge into ``epic-fhir pull``'s layout.

The output directory ends up as ``epic-fhir pull`` leaves it: one ``<Type>.ndjson`` per resource type. While
the job runs, each shard writes into its own directory, ``<out>/.epic-fhir-fleet/shards/<n>/``, by the same
protocol as the pull command's sink:

* a (patient, query) stream's resources stay in memory (or a spool file, past ``spill_bytes``) until the pull
  marks the stream complete; then they are appended to ``<Type>.ndjson.part`` and one journal line records
  the stream, the new size of every part file it touched and its resource counts;
* a shard that starts again (its worker was killed and Dask ran it elsewhere, or the job is resumed) reads
  the journal (a torn last line is ignored), truncates each part file to its journalled size and skips the
  journalled streams: nothing is lost, nothing is written twice;
* a finished shard writes ``done.json`` (counts and failed streams) with a rename, after its part files are
  flushed to disk; a shard that finds it returns it without a request.

A lock file (``flock``) keeps two runs of one shard from writing at once (a worker that Dask gave up on
while it still ran); the kernel releases it when a process dies, even by SIGKILL.

The driver merges the shards in their order into ``<Type>.ndjson`` (written beside, flushed, then renamed:
a final file is never half-written) and removes the state directory unless some stream failed, in which
case a resumed job retries just those streams.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio

from .. import _json
from .._json import dumps_line
from ..pull import PullItem

try:  # POSIX; elsewhere two runs of one shard are not guarded against (Dask does not normally do that)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["STATE_DIR", "ShardOutcome", "ShardSink", "merge_shards", "shard_dir"]

STATE_DIR = ".epic-fhir-fleet"
JOURNAL = "journal.ndjson"
DONE = "done.json"
LOCK = "lock"
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


@dataclass
class _StreamBuffer:
    lines: dict[str, list[bytes]] = field(default_factory=dict)
    size: int = 0
    spools: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class ShardSink:
    """One shard's output and checkpoint (the pull's ``checkpoint=``); see the module docstring."""

    def __init__(self, directory: Path, *, spill_bytes: int = 8 << 20) -> None:
        self.dir = directory
        self.spill_bytes = spill_bytes
        self._done: set[tuple[str, str]] = set()
        self._offsets: dict[str, int] = {}
        self.counts: dict[str, int] = {}  # committed resources per type, earlier runs of the shard included
        self._buffers: dict[tuple[str, str], _StreamBuffer] = {}
        self._files: dict[str, IO[bytes]] = {}
        self._journal: IO[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self._spool_seq = 0

    @property
    def resources(self) -> int:
        return sum(self.counts.values())

    @property
    def streams_done(self) -> int:
        return len(self._done)

    # -- set-up --------------------------------------------------------------------------------------------
    async def open(self, *, retry_failed: bool) -> ShardOutcome | None:
        """Take the shard's lock and load its journal. Returns the stored outcome when the shard already
        finished (then nothing is to be done), unless ``retry_failed`` and some of its streams failed."""
        await anyio.to_thread.run_sync(lambda: self.dir.mkdir(parents=True, exist_ok=True))
        # Another run of this shard may still write (Dask gave up on its worker): poll the kernel's lock, which
        # has no event to wait on.
        while not await anyio.to_thread.run_sync(self._try_lock):  # noqa: ASYNC110
            await anyio.sleep(0.2)
        stored: ShardOutcome | None = None
        try:
            stored = await anyio.to_thread.run_sync(self._open_sync, retry_failed)
        finally:
            if stored is not None or self._journal is None:  # finished already, or failed to open: let go
                with anyio.CancelScope(shield=True):
                    await self.aclose()
        return stored

    def _try_lock(self) -> bool:
        handle = (self.dir / LOCK).open("ab")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
        self._lock = handle
        return True

    def _open_sync(self, retry_failed: bool) -> ShardOutcome | None:
        done = self.dir / DONE
        if done.exists():
            outcome = ShardOutcome.from_json(_json.loads(done.read_bytes()))
            if not (retry_failed and outcome.failed):
                return outcome
            done.unlink()  # a resumed job retries the failed streams; the journal skips the others
        for spool in self.dir.glob("spool-*"):
            spool.unlink()
        journal = self.dir / JOURNAL
        if journal.exists():
            self._read_journal(journal)
        for rtype, size in self._offsets.items():
            with self._part(rtype).open("ab") as f:
                f.truncate(size)  # drop a stream that was being appended when the last run died
        for part in self.dir.glob("*.ndjson.part"):
            if part.name.removesuffix(".ndjson.part") not in self._offsets:
                part.unlink()
        self._journal = journal.open("ab")
        if not self._done:
            self._journal.write(dumps_line({"version": _VERSION}))
            self._journal.flush()
        return None

    def _read_journal(self, journal: Path) -> None:
        data = journal.read_bytes()
        good = 0
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # torn last line: that stream's commit never finished
            try:
                entry = _json.loads(raw)
            except ValueError:
                break
            good += len(raw)
            if "p" in entry:
                self._done.add((entry["p"], entry["q"]))
                self._offsets.update(entry["o"])
                for rtype, n in entry["n"].items():
                    self.counts[rtype] = self.counts.get(rtype, 0) + n
        with journal.open("ab") as f:
            f.truncate(good)

    def _part(self, rtype: str) -> Path:
        return self.dir / f"{rtype}.ndjson.part"

    # -- the pull's checkpoint protocol -------------------------------------------------------------------
    def is_complete(self, patient_id: str, query: str) -> bool:
        return (patient_id, query) in self._done

    async def add(self, item: PullItem) -> None:
        # The hot path (once per resource): the line is all the work; counts are made at commit time.
        key = (item.patient_id, item.query)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _StreamBuffer()
        line = dumps_line(item.resource)
        lines = buf.lines.get(item.resource_type)
        if lines is None:
            lines = buf.lines[item.resource_type] = []
        lines.append(line)
        buf.size += len(line)
        if buf.size >= self.spill_bytes:
            await anyio.to_thread.run_sync(self._spill_sync, buf)

    def _spill_sync(self, buf: _StreamBuffer) -> None:
        for rtype, lines in buf.lines.items():
            buf.counts[rtype] = buf.counts.get(rtype, 0) + len(lines)
            spool = buf.spools.get(rtype)
            if spool is None:
                self._spool_seq += 1
                spool = buf.spools[rtype] = self.dir / f"spool-{self._spool_seq}"
            with spool.open("ab") as f:
                f.writelines(lines)
        buf.lines.clear()
        buf.size = 0

    async def mark_complete(self, patient_id: str, query: str) -> None:
        buf = self._buffers.pop((patient_id, query), None) or _StreamBuffer()
        await anyio.to_thread.run_sync(self._commit_sync, patient_id, query, buf)
        self._done.add((patient_id, query))

    def _commit_sync(self, patient_id: str, query: str, buf: _StreamBuffer) -> None:
        touched: dict[str, int] = {}
        for rtype in {*buf.spools, *buf.lines}:
            f = self._files.get(rtype)
            if f is None:
                f = self._files[rtype] = self._part(rtype).open("ab")
            spool = buf.spools.get(rtype)
            if spool is not None:
                with spool.open("rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
                spool.unlink()
            lines = buf.lines.get(rtype, ())
            buf.counts[rtype] = buf.counts.get(rtype, 0) + len(lines)
            f.writelines(lines)
            f.flush()
            touched[rtype] = self._offsets[rtype] = f.tell()
        for rtype, n in buf.counts.items():
            self.counts[rtype] = self.counts.get(rtype, 0) + n
        assert self._journal is not None
        self._journal.write(dumps_line({"p": patient_id, "q": query, "o": touched, "n": buf.counts}))
        self._journal.flush()

    async def mark_failed(self, patient_id: str, query: str) -> None:
        buf = self._buffers.pop((patient_id, query), None)
        if buf is not None and buf.spools:
            await anyio.to_thread.run_sync(_unlink_all, buf.spools.values())

    # -- the end -------------------------------------------------------------------------------------------
    async def finish(self, failed: list[list[str]]) -> ShardOutcome:
        """Record the finished shard (``done.json``, after its parts are on disk) and release the lock."""
        outcome = ShardOutcome(dict(self.counts), len(self._done), failed)
        try:
            await anyio.to_thread.run_sync(self._finish_sync, outcome)
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()
        return outcome

    def _finish_sync(self, outcome: ShardOutcome) -> None:
        for f in self._files.values():
            os.fsync(f.fileno())
        tmp = self.dir / f".{DONE}.tmp"
        tmp.write_bytes(_json.dumps(outcome.to_json()))
        tmp.replace(self.dir / DONE)

    async def aclose(self) -> None:
        """Close files and release the lock; what was committed stays for the next run of the shard."""
        await anyio.to_thread.run_sync(self._close_sync)

    def _close_sync(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        for buf in self._buffers.values():
            _unlink_all(buf.spools.values())
        self._buffers.clear()
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None


def _unlink_all(paths: Iterable[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


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
