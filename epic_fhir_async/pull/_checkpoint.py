"""Checkpoints of a pull: which (patient, query) streams are complete, so a resumed pull skips them.

A stream is marked complete only after every resource it produced has been handed to the consumer *and*
the consumer asked for the next item (so it has processed the last one). A crash in the middle of a stream
therefore re-fetches that whole stream on resume; the consumer must drop what it kept of incomplete streams
(the ``epic-fhir pull`` command does, by committing a stream's resources to disk only when it completes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import anyio

from .. import _json
from .._config import LOGGER_NAME
from .._errors import ConfigurationError

__all__ = ["StreamCheckpoint", "PullCheckpoint"]

logger = logging.getLogger(f"{LOGGER_NAME}.pull")

_VERSION = 1


@runtime_checkable
class StreamCheckpoint(Protocol):
    """What a pull needs from a checkpoint; implement it to commit your own output with each stream."""

    def is_complete(self, patient_id: str, query: str) -> bool:
        """Whether the stream was completed by an earlier pull (it is then skipped)."""
        ...

    def mark_complete(self, patient_id: str, query: str) -> Awaitable[None]:
        """Called in the consumer's task once the stream's last resource was processed."""
        ...

    def mark_failed(self, patient_id: str, query: str) -> Awaitable[None]:
        """Called in the consumer's task when a stream failed (``on_error="collect"``): drop what it gave."""
        ...


class PullCheckpoint:
    """The default checkpoint: a set of completed streams, JSON-serialisable, optionally saved to a file.

    ``to_json()`` gives ``{"version": 1, "completed": {query: [patient ids]}}``; ``from_json()`` reads it.
    With ``path``, the file is rewritten atomically (temp file + rename) every ``save_every`` completions;
    call :meth:`save` at the end (or in a ``finally``) to record the last few. Memory grows with the number
    of completed streams (a few dozen bytes each).
    """

    def __init__(
        self,
        completed: Iterable[tuple[str, str]] = (),
        *,
        path: str | os.PathLike[str] | None = None,
        save_every: int = 100,
    ) -> None:
        if save_every < 1:
            raise ConfigurationError("save_every must be at least 1")
        self._done: dict[str, set[str]] = {}
        for patient_id, query in completed:
            self._done.setdefault(query, set()).add(patient_id)
        self.path = anyio.Path(path) if path is not None else None
        self.save_every = save_every
        self._unsaved = 0

    def __len__(self) -> int:
        return sum(len(p) for p in self._done.values())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 2 and self.is_complete(*key)

    def __repr__(self) -> str:  # never the patient ids
        return f"PullCheckpoint(completed={len(self)}, path={str(self.path) if self.path else None!r})"

    def is_complete(self, patient_id: str, query: str) -> bool:
        done = self._done.get(query)
        return done is not None and patient_id in done

    async def mark_complete(self, patient_id: str, query: str) -> None:
        self._done.setdefault(query, set()).add(patient_id)
        self._unsaved += 1
        if self.path is not None and self._unsaved >= self.save_every:
            await self.save()

    async def mark_failed(self, patient_id: str, query: str) -> None:
        """A failed stream stays incomplete, so a resumed pull retries it."""

    def to_json(self) -> dict[str, Any]:
        return {"version": _VERSION, "completed": {q: sorted(p) for q, p in sorted(self._done.items())}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], **kwargs: Any) -> PullCheckpoint:
        if not isinstance(data, Mapping) or data.get("version") != _VERSION:
            raise ConfigurationError("not a pull checkpoint (expected version 1)")
        completed = data.get("completed")
        if not isinstance(completed, Mapping):
            raise ConfigurationError("pull checkpoint without a 'completed' mapping")
        pairs = [(str(p), str(q)) for q, patients in completed.items() for p in patients]
        return cls(pairs, **kwargs)

    async def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write the checkpoint atomically: a temp file beside the target, then a rename."""
        target = anyio.Path(path) if path is not None else self.path
        if target is None:
            raise ConfigurationError("PullCheckpoint.save() needs a path")
        tmp = target.with_name(f".{target.name}.tmp")
        await tmp.write_bytes(_json.dumps(self.to_json()))
        await tmp.replace(target)
        self._unsaved = 0
        logger.debug("checkpoint saved: %d completed streams", len(self))

    @classmethod
    async def load(cls, path: str | os.PathLike[str], *, save_every: int = 100) -> PullCheckpoint:
        """Read a checkpoint file; a missing file gives an empty checkpoint that saves to ``path``."""
        file = anyio.Path(path)
        if not await file.exists():
            return cls(path=path, save_every=save_every)
        try:
            data = _json.loads(await file.read_bytes())
        except _json.JSONDecodeError as exc:
            raise ConfigurationError(f"pull checkpoint {file.name} is not valid JSON") from exc
        return cls.from_json(data, path=path, save_every=save_every)
