"""The output directory of ``epic-fhir pull``, as the command talks about it.

The files are written by :class:`epic_fhir_async.pull.NDJSONSink` (one ``<Type>.ndjson`` per resource type,
crash-safe, resumable without duplicates; its docstring has the protocol). Here: whether a directory holds an
interrupted pull (what ``--resume`` continues) or a finished one, and the error for the first without
``--resume``.
"""

from __future__ import annotations

from pathlib import Path

from ..pull import NDJSONSink

__all__ = ["STATE_DIR", "OutputStateError", "finished_files", "resumable"]

STATE_DIR = NDJSONSink.STATE_DIR


class OutputStateError(Exception):
    """The output directory holds an interrupted pull and ``--resume`` was not given."""

    @classmethod
    def for_directory(cls, out: Path) -> OutputStateError:
        return cls(
            f"{out} holds an interrupted pull: pass --resume to continue it, or remove {out / STATE_DIR}"
        )


def resumable(out: Path) -> bool:
    """Whether ``out`` holds the journal of an unfinished pull (what ``--resume`` continues)."""
    return (out / STATE_DIR / NDJSONSink.JOURNAL).is_file()


def finished_files(out: Path) -> list[Path]:
    """The ``<Type>.ndjson`` files of a finished pull in ``out`` (none while a journal is left to resume)."""
    if resumable(out) or not out.is_dir():
        return []
    return sorted(p for p in out.glob("*.ndjson") if p.is_file())
