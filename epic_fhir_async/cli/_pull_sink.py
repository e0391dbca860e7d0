"""Crash-safe NDJSON output of ``epic-fhir pull``: one file per resource type, resumable without duplicates.

How it stays safe:

* Resources are kept per (patient, query) stream until the pull marks that stream complete (the sink *is*
  the pull's checkpoint). Then, in one worker-thread call, the stream's lines are appended to
  ``<Type>.ndjson.part`` and a journal line records the new byte size of every part file it touched.
* A crash can leave a part file longer than the journal says (a stream half-appended) or a torn last
  journal line; ``--resume`` ignores the torn line, truncates each part file to its journalled size and
  skips the journalled streams, so nothing is lost or duplicated.
* When the pull ends, the part files are renamed to ``<Type>.ndjson`` (an atomic rename: a final file is
  never half-written). Without failures the state directory is removed; with failed streams it is kept, so
  ``--resume`` retries just those (moving the final files back to parts first). A pull that completed no
  stream at all keeps no state (:meth:`NDJSONSink.discard_if_empty`): there is nothing to resume.

A stream larger than ``spill_bytes`` spills to a spool file in the state directory instead of memory.
Every file operation runs in a worker thread (``anyio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import orjson

from ..pull import PullItem


def _dumps_line(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


STATE_DIR = ".epic-fhir-pull"
JOURNAL = "journal.ndjson"
_VERSION = 1


class OutputStateError(Exception):
    """The output directory holds an interrupted pull and ``--resume`` was not given."""

    @classmethod
    def for_directory(cls, out: Path) -> OutputStateError:
        return cls(
            f"{out} holds an interrupted pull: pass --resume to continue it, or remove {out / STATE_DIR}"
        )


def resumable(out: Path) -> bool:
    """Whether ``out`` holds the journal of an unfinished pull (what ``--resume`` continues)."""
    return (out / STATE_DIR / JOURNAL).is_file()


def finished_files(out: Path) -> list[Path]:
    """The ``<Type>.ndjson`` files of a finished pull in ``out`` (none while a journal is left to resume)."""
    if resumable(out) or not out.is_dir():
        return []
    return sorted(p for p in out.glob("*.ndjson") if p.is_file())


@dataclass
class _StreamBuffer:
    lines: dict[str, list[bytes]] = field(default_factory=dict)  # resource type -> NDJSON lines
    size: int = 0
    spools: dict[str, Path] = field(default_factory=dict)  # resource type -> spool file (large streams)
    counts: dict[str, int] = field(default_factory=dict)  # resource type -> resources


class NDJSONSink:
    """The pull checkpoint that writes what completes; see the module docstring for the file protocol."""

    def __init__(self, out: Path, *, spill_bytes: int = 8 << 20) -> None:
        self.out = out
        self.state = out / STATE_DIR
        self.spill_bytes = spill_bytes
        self._done: set[tuple[str, str]] = set()
        self._offsets: dict[str, int] = {}  # resource type -> committed size of its part file
        self._buffers: dict[tuple[str, str], _StreamBuffer] = {}
        self._files: dict[str, IO[bytes]] = {}
        self._journal: IO[bytes] | None = None
        self._spool_seq = 0
        self.resumed_streams = 0
        self.counts: dict[str, int] = {}  # resource type -> resources committed in this run
        self._created_out = False

    @property
    def has_progress(self) -> bool:
        """Whether some stream is complete (in this run or an earlier one): only then is there a pull to resume."""
        return bool(self._done)

    # -- set-up ------------------------------------------------------------------------------------------
    async def open(self, *, resume: bool) -> None:
        await anyio.to_thread.run_sync(self._open_sync, resume)

    def _open_sync(self, resume: bool) -> None:
        self._created_out = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        journal = self.state / JOURNAL
        if journal.exists() and not resume:
            raise OutputStateError.for_directory(self.out)
        self.state.mkdir(exist_ok=True)
        for spool in self.state.glob("spool-*"):
            spool.unlink()
        if journal.exists():
            self._read_journal(journal)
        for rtype, size in self._offsets.items():
            part, final = self._part(rtype), self.out / f"{rtype}.ndjson"
            if not part.exists() and final.exists():
                final.replace(part)  # a finished-with-failures run renamed it; continue appending
            with part.open("ab") as f:
                f.truncate(size)  # drop a stream that was being appended when the crash happened
        for part in self.out.glob("*.ndjson.part"):
            if part.name.removesuffix(".ndjson.part") not in self._offsets:
                part.unlink()  # data of streams the journal never recorded
        self._journal = journal.open("ab")
        if not self._done:
            self._journal.write(_dumps_line({"version": _VERSION}))
            self._journal.flush()

    def _read_journal(self, journal: Path) -> None:
        data = journal.read_bytes()
        good = 0
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # torn last line: that stream's commit never finished
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                break
            good += len(raw)
            if "p" in entry:
                self._done.add((entry["p"], entry["q"]))
                self._offsets.update(entry["o"])
        with journal.open("ab") as f:
            f.truncate(good)
        self.resumed_streams = len(self._done)

    def _part(self, rtype: str) -> Path:
        return self.out / f"{rtype}.ndjson.part"

    # -- the pull's checkpoint protocol ----------------------------------------------------------------
    def is_complete(self, patient_id: str, query: str) -> bool:
        return (patient_id, query) in self._done

    async def add(self, item: PullItem) -> None:
        """Keep one resource of a stream until the stream completes (spilling big streams to disk)."""
        key = (item.patient_id, item.query)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _StreamBuffer()
        line = _dumps_line(item.resource)
        buf.lines.setdefault(item.resource_type, []).append(line)
        buf.size += len(line)
        buf.counts[item.resource_type] = buf.counts.get(item.resource_type, 0) + 1
        if buf.size >= self.spill_bytes:
            await anyio.to_thread.run_sync(self._spill_sync, buf)

    def _spill_sync(self, buf: _StreamBuffer) -> None:
        for rtype, lines in buf.lines.items():
            spool = buf.spools.get(rtype)
            if spool is None:
                self._spool_seq += 1
                spool = buf.spools[rtype] = self.state / f"spool-{self._spool_seq}"
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
            f.writelines(lines)
            f.flush()
            touched[rtype] = self._offsets[rtype] = f.tell()
            self.counts[rtype] = self.counts.get(rtype, 0) + buf.counts.get(rtype, 0)
        assert self._journal is not None
        self._journal.write(_dumps_line({"p": patient_id, "q": query, "o": touched}))
        self._journal.flush()

    async def mark_failed(self, patient_id: str, query: str) -> None:
        buf = self._buffers.pop((patient_id, query), None)
        if buf is not None and buf.spools:
            await anyio.to_thread.run_sync(_unlink_all, buf.spools.values())

    # -- the end -----------------------------------------------------------------------------------------
    async def finish(self, *, keep_state: bool) -> dict[str, Path]:
        """Rename the part files to their final names; keep the journal only if some stream failed."""
        return await anyio.to_thread.run_sync(self._finish_sync, keep_state)

    def _finish_sync(self, keep_state: bool) -> dict[str, Path]:
        self._close_sync()
        finals: dict[str, Path] = {}
        for part in sorted(self.out.glob("*.ndjson.part")):
            rtype = part.name.removesuffix(".ndjson.part")
            with part.open("rb+") as f:
                os.fsync(f.fileno())  # durable before the rename makes it visible as complete
            final = self.out / f"{rtype}.ndjson"
            part.replace(final)
            finals[rtype] = final
        if not keep_state:
            shutil.rmtree(self.state, ignore_errors=True)
        return finals

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
        shutil.rmtree(self.state, ignore_errors=True)
        if self._created_out:
            with contextlib.suppress(OSError):  # not empty: leave it
                self.out.rmdir()

    async def aclose(self) -> None:
        """Close files without finishing (the pull was interrupted): the state stays for ``--resume``."""
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


def _unlink_all(paths: Iterable[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)
