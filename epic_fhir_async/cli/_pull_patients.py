"""The ``--patients`` of ``epic-fhir pull``: FHIR ids and files of ids, checked up front, read lazily."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .. import ConfigurationError
from ..pull import check_patient_id
from ._common import CLIError, advice

#: Extensions that make a missing ``--patients`` argument a mistyped file name rather than an id.
_FILE_SUFFIXES = frozenset(
    {".txt", ".csv", ".tsv", ".ndjson", ".json", ".jsonl", ".lst", ".list", ".ids", ".dat"}
)


def _looks_like_path(arg: str) -> bool:
    # FHIR ids never hold a path separator, and a known data-file extension says "file" (Epic ids may hold
    # dots, e.g. "eD.LxhDyX35TntF77l7etUA3", so any dot alone proves nothing).
    return any(sep in arg for sep in ("/", os.sep, os.altsep or "/")) or (
        Path(arg).suffix.lower() in _FILE_SUFFIXES
    )


def _patient_arg_error(arg: str) -> str | None:
    """Why an argument of ``--patients`` that is not a readable file is not a patient id either, or ``None``."""
    head, sep, _ = arg.partition("/")
    if sep and head == "Patient" and not Path(arg).exists():
        return f"--patients {arg}: give the bare id (what follows 'Patient/'), not a reference"
    if _looks_like_path(arg):
        kind = "not a file" if Path(arg).exists() else "no such file"
        return f"--patients {arg}: {kind} (give FHIR ids, or files with one id per line)"
    try:
        check_patient_id(arg)
    except ConfigurationError as exc:
        return f"--patients {arg!r} is neither a file nor a patient id: {advice(str(exc))}"
    return None


@dataclass
class PatientSource:
    """Patient ids from arguments and files, read lazily; ``__length_hint__`` (counted up front) drives
    the progress bar's total without holding the ids in memory.

    :meth:`prepare` checks every argument and every line first, so a mistyped file name or a file that is
    not a list of ids stops the command before anything is requested or written (:class:`CLIError`).
    """

    args: Sequence[str]
    count: int = 0
    _files: dict[str, bool] = field(default_factory=dict)

    async def prepare(self) -> None:
        problem = await anyio.to_thread.run_sync(self._count)
        if problem is not None:
            raise CLIError(problem)
        if self.count == 0:
            raise CLIError("--patients: the files hold no patient ids")

    def _count(self) -> str | None:
        n = 0
        for arg in self.args:
            path = Path(arg)
            if not path.is_file():
                problem = _patient_arg_error(arg)
                if problem is not None:
                    return problem
                n += 1
                continue
            self._files[arg] = True
            try:
                with path.open(encoding="utf-8-sig") as f:
                    for number, line in enumerate(f, 1):
                        value = line.strip()
                        if not value or value.startswith("#"):
                            continue
                        try:
                            check_patient_id(value)
                        except ConfigurationError as exc:  # the message never repeats the line: it may be PHI
                            return (
                                f"{arg} line {number}: {advice(str(exc))}; give one id per line ('#' starts a "
                                "comment)"
                            )
                        n += 1
            except UnicodeDecodeError:
                return f"{arg} is not a UTF-8 text file of patient ids"
            except OSError as exc:
                return f"cannot read {arg}: {exc.strerror}"
        self.count = n
        return None

    def __length_hint__(self) -> int:
        return self.count

    async def __aiter__(self) -> AsyncIterator[str]:
        for arg in self.args:
            if not self._files.get(arg):
                yield arg
                continue
            async with await anyio.open_file(arg, encoding="utf-8-sig") as f:
                async for line in f:
                    value = line.strip()
                    if value and not value.startswith("#"):
                        yield value
