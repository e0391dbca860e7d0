"""Crash-safe NDJSON output of a pull: one file per resource type, resumable without losing or repeating a line.

The one writer behind ``epic-fhir pull`` and each shard of a fleet pull. How it stays safe:

* A (patient, query) stream's resources stay in memory (past ``spill_bytes``, in a spool file in the state
  directory) until the pull marks the stream complete (the sink *is* the pull's checkpoint). Then, in one
  worker-thread call, they are appended to ``<Type>.ndjson.part`` and one journal line records the stream, the
  new byte size of every part file it touched and its resource counts.
* A crash can leave a part file longer than the journal says (a stream half-appended) or a torn last journal
  line. Opening again with ``resume=True`` ignores the torn line, truncates each part file to its journalled
  size, deletes part files the journal never recorded and skips the journalled streams: nothing is lost,
  nothing is written twice.
* :meth:`NDJSONSink.finish` flushes the part files to disk and renames them to ``<Type>.ndjson`` (an atomic
  rename: a final file is never half-written); :meth:`NDJSONSink.sync` only flushes them, for a caller that
  merges the parts itself (the fleet's driver).
* With ``lock=True``, a lock file (``flock``) keeps two processes from writing into one directory at once; the
  kernel releases it when a process dies, even by SIGKILL.

Every file operation runs in a worker thread (``anyio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio

from .. import _json
from .._errors import ConfigurationError
from ._values import PullItem

try:  # POSIX; elsewhere two writers of one directory are not guarded against
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["NDJSONSink"]

_VERSION = 1
_PART = ".ndjson.part"


@dataclass
class _StreamBuffer:
    lines: dict[str, list[bytes]] = field(default_factory=dict)  # resource type -> NDJSON lines
    size: int = 0
    spools: dict[str, Path] = field(default_factory=dict)  # resource type -> spool file (large streams)
    counts: dict[str, int] = field(default_factory=dict)  # resource type -> resources spilled or committed


class NDJSONSink:
    """Writes a pull into ``out`` as one ``<Type>.ndjson`` per resource type, crash-safely and resumably.

    Pass it as the pull's checkpoint and hand it every item::

        sink = NDJSONSink("extract")
        await sink.open(resume=True)           # continues an interrupted pull in "extract", if there is one
        try:
            async with client.pull(patients, types, checkpoint=sink) as stream:
                async for item in stream:
                    await sink.add(item)
            files = await sink.finish(keep_state=bool(stream.failures))
        except BaseException:
            await sink.aclose()                # what completed stays for the next resume=True
            raise

    Only streams the pull marks complete reach the files (see the module docstring for the protocol), so a
    resumed pull re-fetches the interrupted streams and repeats nothing. The journal and spool files live in
    ``state_dir`` (default ``out/.epic-fhir-pull``), which :meth:`finish` removes unless ``keep_state`` (some
    streams failed: a later ``resume=True`` retries just those). ``spill_bytes`` bounds the memory one stream
    may hold. ``lock=True`` takes an exclusive lock file in ``state_dir`` before opening (released by
    :meth:`finish` and :meth:`aclose`), for directories that two processes might write at once.

    ``counts`` holds the resources written per type by this run; ``total_counts`` adds those of the earlier runs
    the journal records. The files hold resources exactly as the server sent them, patient data included:
    protect ``out``.
    """

    #: The default state directory's name inside ``out``; ``JOURNAL`` is its journal's.
    STATE_DIR = ".epic-fhir-pull"
    JOURNAL = "journal.ndjson"
    LOCK = "lock"

    def __init__(
        self,
        out: str | os.PathLike[str],
        *,
        state_dir: str | os.PathLike[str] | None = None,
        spill_bytes: int = 8 << 20,
        lock: bool = False,
    ) -> None:
        if isinstance(spill_bytes, bool) or not isinstance(spill_bytes, int) or spill_bytes < 1:
            raise ConfigurationError(f"spill_bytes={spill_bytes!r}: a positive number of bytes")
        self.out = Path(out)
        self.state = Path(state_dir) if state_dir is not None else self.out / self.STATE_DIR
        self.spill_bytes = spill_bytes
        self.lock = lock
        self.counts: dict[str, int] = {}  # resource type -> resources committed in this run
        self.resumed_streams = 0
        self._resumed_counts: dict[str, int] = {}  # resource type -> resources committed by earlier runs
        self._done: set[tuple[str, str]] = set()
        self._offsets: dict[str, int] = {}  # resource type -> committed size of its part file
        self._buffers: dict[tuple[str, str], _StreamBuffer] = {}
        self._files: dict[str, IO[bytes]] = {}
        self._journal: IO[bytes] | None = None
        self._lock_file: IO[bytes] | None = None
        self._spool_seq = 0
        self._created_out = False

    def __repr__(self) -> str:  # never a patient id
        return f"NDJSONSink({str(self.out)!r}, streams_done={len(self._done)})"

    @property
    def has_progress(self) -> bool:
        """Whether some stream is complete (in this run or an earlier one): only then is there a pull to resume."""
        return bool(self._done)

    @property
    def streams_done(self) -> int:
        """Streams complete, earlier runs' included."""
        return len(self._done)

    @property
    def total_counts(self) -> dict[str, int]:
        """Resources per type in the part files: the earlier runs' (from the journal) and this run's."""
        total = dict(self._resumed_counts)
        for rtype, n in self.counts.items():
            total[rtype] = total.get(rtype, 0) + n
        return total

    # -- set-up ------------------------------------------------------------------------------------------------
    async def acquire_lock(self) -> None:
        """Wait until no other process writes here (``lock=True``): an ``flock`` on ``state_dir/lock``.

        :meth:`open` takes it; call it first to look at the directory under the lock. The kernel has no event
        to wait on for another process's lock, so this polls.
        """
        if self._lock_file is not None:
            return
        await anyio.to_thread.run_sync(lambda: self.state.mkdir(parents=True, exist_ok=True))
        while not await anyio.to_thread.run_sync(self._try_lock):  # noqa: ASYNC110
            await anyio.sleep(0.2)

    def _try_lock(self) -> bool:
        handle = (self.state / self.LOCK).open("ab")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
        self._lock_file = handle
        return True

    async def open(self, *, resume: bool) -> None:
        """Create ``out`` and the journal, or with ``resume`` continue the interrupted pull found there.

        Without ``resume``, a directory that holds an interrupted pull is a :class:`ConfigurationError` (its
        completed streams would be silently lost). Takes the lock first when the sink was made with ``lock=True``.
        """
        if self.lock:
            await self.acquire_lock()
        try:
            await anyio.to_thread.run_sync(self._open_sync, resume)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise

    def _open_sync(self, resume: bool) -> None:
        self._created_out = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        journal = self.state / self.JOURNAL
        if journal.exists() and not resume:
            raise ConfigurationError(
                f"{self.out} holds an interrupted pull: open it with resume=True to continue it, or remove "
                f"{self.state}"
            )
        self.state.mkdir(parents=True, exist_ok=True)
        for spool in self.state.glob("spool-*"):
            spool.unlink()
        if journal.exists():
            self._read_journal(journal)
        for rtype, size in self._offsets.items():
            part, final = self._part(rtype), self.out / f"{rtype}.ndjson"
            if not part.exists() and final.exists():
                final.replace(part)  # a run that finished with failures renamed it: continue appending
            with part.open("ab") as f:
                f.truncate(size)  # drop a stream that was being appended when the crash happened
        for part in self.out.glob(f"*{_PART}"):
            if part.name.removesuffix(_PART) not in self._offsets:
                part.unlink()  # data of streams the journal never recorded
        self._journal = journal.open("ab")
        if not self._done:
            self._journal.write(_json.dumps_line({"version": _VERSION}))
            self._journal.flush()

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
                for rtype, n in entry.get("n", {}).items():  # journals of earlier versions have no counts
                    self._resumed_counts[rtype] = self._resumed_counts.get(rtype, 0) + n
        with journal.open("ab") as f:
            f.truncate(good)
        self.resumed_streams = len(self._done)

    def _part(self, rtype: str) -> Path:
        return self.out / f"{rtype}{_PART}"

    # -- the pull's checkpoint protocol ----------------------------------------------------------------------
    def is_complete(self, patient_id: str, query: str) -> bool:
        return (patient_id, query) in self._done

    async def add(self, item: PullItem) -> None:
        """Keep one resource of a stream until the stream completes (spilling big streams to disk)."""
        # The hot path (once per resource): the line is all the work; counts are made when lines leave memory.
        key = (item.patient_id, item.query)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _StreamBuffer()
        line = _json.dumps_line(item.resource)
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
                spool = buf.spools[rtype] = self.state / f"spool-{self._spool_seq}"
            with spool.open("ab") as f:
                f.writelines(lines)
        buf.lines.clear()
        buf.size = 0

    async def mark_complete(self, patient_id: str, query: str) -> None:
        """Append the stream's resources to the part files and journal it (the pull calls this)."""
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
        if self._journal is None:
            raise RuntimeError("NDJSONSink.open() was not called (or the sink is closed)")
        self._journal.write(_json.dumps_line({"p": patient_id, "q": query, "o": touched, "n": buf.counts}))
        self._journal.flush()

    async def mark_failed(self, patient_id: str, query: str) -> None:
        """Drop what a failed stream gave (the pull calls this with ``on_error="collect"``)."""
        buf = self._buffers.pop((patient_id, query), None)
        if buf is not None and buf.spools:
            await anyio.to_thread.run_sync(_unlink_all, buf.spools.values())

    # -- the end -----------------------------------------------------------------------------------------------
    async def sync(self) -> None:
        """Flush every part file to disk (``fsync``), without renaming: for a caller that merges the parts."""
        await anyio.to_thread.run_sync(self._sync_parts)

    def _sync_parts(self) -> list[Path]:
        """fsync every part file: durable before anything (a rename, a marker) says the output is complete."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        synced = {Path(f.name) for f in self._files.values()}
        parts = sorted(self.out.glob(f"*{_PART}"))
        for part in parts:
            if part not in synced:  # written by an earlier run
                with part.open("rb+") as f:
                    os.fsync(f.fileno())
        return parts

    async def finish(self, *, keep_state: bool) -> dict[str, Path]:
        """Flush the part files to disk and rename them to ``<Type>.ndjson``; the files by resource type.

        The state directory is removed unless ``keep_state`` (some streams failed: a later ``resume=True``
        retries just those, moving the final files back to parts first). Releases the lock.
        """
        try:
            return await anyio.to_thread.run_sync(self._finish_sync, keep_state)
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    def _finish_sync(self, keep_state: bool) -> dict[str, Path]:
        parts = self._sync_parts()
        self._close_files_sync()  # before the renames (Windows renames no open file); the lock stays held
        finals: dict[str, Path] = {}
        for part in parts:
            rtype = part.name.removesuffix(_PART)
            final = self.out / f"{rtype}.ndjson"
            part.replace(final)
            finals[rtype] = final
        if not keep_state:
            self._remove_state_sync()
        return finals

    def _remove_state_sync(self) -> None:
        if self.out.resolve().is_relative_to(self.state.resolve()):  # state_dir=out: the state's files only
            for name in (self.JOURNAL, self.LOCK):
                (self.state / name).unlink(missing_ok=True)
            _unlink_all(self.state.glob("spool-*"))
        else:
            shutil.rmtree(self.state, ignore_errors=True)

    async def discard_if_empty(self) -> bool:
        """After a pull that completed no stream at all (set-up failed, every stream failed, interrupted at
        once): remove the state directory, and ``out`` if this sink created it and it is empty, so nothing
        suggests a pull to resume. Returns whether it did."""
        if self.has_progress:
            return False
        await anyio.to_thread.run_sync(self._discard_sync)
        return True

    def _discard_sync(self) -> None:
        self._close_sync()
        self._remove_state_sync()
        if self._created_out:
            with contextlib.suppress(OSError):  # not empty: leave it
                self.out.rmdir()

    async def aclose(self) -> None:
        """Close the files and release the lock without finishing: what was committed stays for ``resume=True``."""
        await anyio.to_thread.run_sync(self._close_sync)

    def _close_sync(self) -> None:
        self._close_files_sync()
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None

    def _close_files_sync(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        for buf in self._buffers.values():
            _unlink_all(buf.spools.values())
        self._buffers.clear()


def _unlink_all(paths: Iterable[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)
