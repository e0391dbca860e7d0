"""The exports ``epic-fhir export`` started and did not finish, kept in one small JSON file per user.

``$XDG_STATE_HOME/epic-fhir/exports.json`` (default ``~/.local/state/epic-fhir/exports.json``, mode 0600). A
record is added as soon as Epic accepts a kick-off (or ``--resume`` takes up a job) and removed when the job
is downloaded, cancelled, or found gone; what is left is what ``epic-fhir export list`` shows: jobs that may
still hold Epic's one export slot per client and Group. A record holds what continuing or cancelling the job
needs without retyping it: the status URL, the base URL, the client id, the key file's path, the name of the
password variable (never a password or a token), the Group, the types and the output directory.

Several commands may run at once: each change re-reads the file under an exclusive lock (POSIX) and replaces
it atomically. A file that cannot be read is reported and left alone; the export itself goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STATE_FILE = "exports.json"
_VERSION = 1


def state_dir() -> Path:
    """``$XDG_STATE_HOME/epic-fhir``, by default ``~/.local/state/epic-fhir``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "epic-fhir"


def state_file() -> Path:
    return state_dir() / STATE_FILE


@dataclass
class ExportRecord:
    """One export started here and not finished (paths absolute: the list is read from any directory)."""

    status_url: str
    base_url: str
    started: str  # ISO 8601, UTC
    out: str | None = None
    group: str | None = None
    types: list[str] | None = None
    client_id: str | None = None
    key: str | None = None
    token_url: str | None = None
    password_env: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> ExportRecord | None:
        if not isinstance(data, dict) or not isinstance(data.get("status_url"), str):
            return None
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:  # a field missing: not a record of ours
            return None

    @property
    def started_at(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.started)
        except ValueError:
            return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StateFileError(Exception):
    """The state file exists but cannot be read or written; the message says which and why."""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the atomic replace still keeps the file whole
        yield
        return
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read(path: Path) -> list[ExportRecord]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise StateFileError(f"{path} is not valid JSON; remove it to start a new list") from None
    items = data.get("exports") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise StateFileError(f"{path} is not a list of exports; remove it to start a new list")
    return [r for r in map(ExportRecord.from_json, items) if r is not None]


def _write(path: Path, records: list[ExportRecord]) -> None:
    body = json.dumps({"version": _VERSION, "exports": [asdict(r) for r in records]}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".exports-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load() -> list[ExportRecord]:
    """Every record, oldest first (:class:`StateFileError` when the file is unreadable)."""
    return _read(state_file())


def _update(change: Callable[[list[ExportRecord]], list[ExportRecord]]) -> None:
    path = state_file()
    try:
        with _locked(path):
            _write(path, change(_read(path)))
    except OSError as exc:
        raise StateFileError(f"cannot update {path}: {exc.strerror or exc}") from None


def remember(record: ExportRecord) -> None:
    """Add ``record`` (replacing one with the same status URL)."""
    _update(lambda records: [r for r in records if r.status_url != record.status_url] + [record])


def forget(status_url: str) -> bool:
    """Remove the record of ``status_url``; whether there was one."""
    found: list[bool] = []

    def change(records: list[ExportRecord]) -> list[ExportRecord]:
        kept = [r for r in records if r.status_url != status_url]
        found.append(len(kept) != len(records))
        return kept

    if not state_file().exists():
        return False
    _update(change)
    return bool(found and found[0])


def find(status_url: str) -> ExportRecord | None:
    """The record of ``status_url``, if this machine started (or resumed) it and did not finish it."""
    try:
        return next((r for r in load() if r.status_url == status_url), None)
    except StateFileError:
        return None
