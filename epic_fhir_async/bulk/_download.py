"""Writing a finished export's files to a directory: atomic, resumable, count-checked, errors surfaced.

Each file is streamed to ``.<name>.part`` in ~1 MB writes (file I/O in worker threads, never on the event
loop), its lines counted on the way, then renamed into place. A sidecar ``.epic-fhir-export.json`` records the
status URL, the manifest and every completed file with its line count and size, so a rerun after a crash
skips what is already complete and fetches only the rest. The manifest's ``count`` is checked for every
output and deleted file (a mismatch is a :class:`BulkExportError` and leaves no file behind; a file that
passes its count is stopped there, not read to its end). Error files (OperationOutcome NDJSON: errors *and*
informational messages at Epic, docs/epic-notes.md §4.4) are always fetched; their ``count`` is advisory (a
real server's did not match its lines: a warning, not a failure); their outcomes are returned and
summarised at WARNING level by severity and code only (diagnostics can name patients). ``deleted`` files
(Bundles of resources deleted since ``_since``) are written as ``deleted.NNN.ndjson``. A compressed file may
inflate at most :data:`._files.MAX_INFLATION` times, so a gzip bomb cannot fill the disk.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections import Counter
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from .. import _json, _retry
from .._config import LOGGER_NAME, MAX_RESOURCE_BYTES
from .._errors import BulkExportError, ConfigurationError, ResponseTooLarge, TransportError
from .._http import abandon
from .._outcome import OperationOutcome
from .._urls import redact_url
from ._files import FileSource, body_chunks, file_failed, more_than_counted, open_file, unwrap_group
from ._manifest import BulkFileRef
from ._ndjson import NDJSONError, NDJSONSplitter

__all__ = ["SIDECAR_NAME", "BulkDownloadResult", "BulkTransferStats", "DownloadedFile", "download"]

logger = logging.getLogger(f"{LOGGER_NAME}.bulk")

#: The bookkeeping file a download keeps in its directory.
SIDECAR_NAME = ".epic-fhir-export.json"
_WRITE_BYTES = 1024 * 1024


@dataclass
class BulkTransferStats:
    """Live counters of a download, updated in place (a progress display reads them on its own timer)."""

    files_total: int = 0
    files_done: int = 0
    files_skipped: int = 0
    bytes: int = 0
    resources: int = 0


@dataclass(frozen=True)
class DownloadedFile:
    """One file on disk: its manifest entry, path, non-blank line count, size, and whether a rerun kept it."""

    ref: BulkFileRef
    path: pathlib.Path
    lines: int
    size: int
    skipped: bool = False


@dataclass(frozen=True)
class BulkDownloadResult:
    """What :meth:`BulkExportJob.download` wrote; ``outcomes`` are the error files' OperationOutcomes,
    ``deleted_files`` the manifest's ``deleted`` files (Bundles of deletions)."""

    directory: pathlib.Path
    files: tuple[DownloadedFile, ...]
    error_files: tuple[DownloadedFile, ...]
    outcomes: tuple[OperationOutcome, ...]
    deleted_files: tuple[DownloadedFile, ...] = ()

    @property
    def resources(self) -> int:
        return sum(f.lines for f in self.files)

    def counts(self) -> dict[str, int]:
        """Resources on disk per type."""
        totals: dict[str, int] = {}
        for f in self.files:
            totals[f.ref.type] = totals.get(f.ref.type, 0) + f.lines
        return totals


def _names(refs: Sequence[BulkFileRef], prefix: str | None) -> list[str]:
    # Deterministic from manifest order, so a rerun maps each URL to the same name.
    seen: Counter[str] = Counter()
    names = []
    for ref in refs:
        stem = prefix or "".join(ch for ch in ref.type if ch.isalnum()) or "Unknown"
        seen[stem] += 1
        names.append(f"{stem}.{seen[stem]:03d}.ndjson")
    return names


async def _load_sidecar(path: anyio.Path) -> dict[str, Any]:
    try:
        data = _json.loads(await path.read_bytes())
    except (FileNotFoundError, ValueError):
        return {"files": {}}
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return {"files": {}}
    return data


async def _save_sidecar(path: anyio.Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".part")
    await tmp.write_bytes(_json.dumps(state))
    await tmp.replace(path)


async def _fetch_to(
    source: FileSource, ref: BulkFileRef, path: anyio.Path, stats: BulkTransferStats, *, strict: bool = True
) -> tuple[int, int]:
    """Stream one file to ``path`` through a temporary name; returns (non-blank lines, bytes).

    ``strict``: the manifest's ``count`` must match (else nothing is kept); otherwise a mismatch is logged."""
    counted = ref.count if strict else None
    tmp = path.with_name(f".{path.name}.part")
    retrying = _retry.Retrying(_retry.BULK_FILE_RETRY)
    while True:
        retrying.attempt += 1
        splitter = NDJSONSplitter(parse=False, max_line=source.max_line)
        size = 0
        try:
            async with (
                open_file(source, ref.url) as response,
                aclosing(body_chunks(response)) as body,
                await anyio.open_file(tmp, "wb") as out,
            ):
                pending: list[bytes] = []
                pending_size = 0
                async for chunk in body:
                    try:
                        splitter.feed(chunk)
                    except ResponseTooLarge:
                        await abandon(response, body)  # the rest is not read: leave nothing suspended
                        raise
                    if counted is not None and splitter.lines > counted:
                        await abandon(response, body)
                        raise more_than_counted(ref, splitter.lines)  # noqa: TRY301 - the file's own cleanup below
                    pending.append(chunk)
                    pending_size += len(chunk)
                    stats.bytes += len(chunk)
                    if pending_size >= _WRITE_BYTES:
                        await out.write(b"".join(pending))
                        size += pending_size
                        pending, pending_size = [], 0
                if pending:
                    await out.write(b"".join(pending))
                    size += pending_size
                splitter.finish()
            break
        except (httpx.TransportError, TransportError) as exc:
            delay = retrying.next_delay()
            if delay is None:
                await tmp.unlink(missing_ok=True)
                raise file_failed(source, ref, exc) from exc
            await anyio.sleep(delay)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # an undecodable body, a malformed redirect
            await tmp.unlink(missing_ok=True)
            raise file_failed(source, ref, exc) from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await tmp.unlink(missing_ok=True)
            raise
    if ref.count is not None and splitter.lines != ref.count:
        if strict:
            await tmp.unlink(missing_ok=True)
            raise BulkExportError(
                f"bulk file {redact_url(ref.url)} ({ref.type}) held {splitter.lines} resources; "
                f"the manifest says {ref.count}"
            )
        logger.warning(
            "bulk error file %s holds %d line(s); the manifest says %d (kept: error-file counts are advisory)",
            redact_url(ref.url),
            splitter.lines,
            ref.count,
        )
    await tmp.replace(path)
    return splitter.lines, size


async def _read_outcomes(files: Sequence[DownloadedFile]) -> list[OperationOutcome]:
    outcomes: list[OperationOutcome] = []
    for f in files:
        # One OperationOutcome per line: a resource's limit, not a page's (parsing JSON multiplies its size).
        splitter = NDJSONSplitter(max_line=MAX_RESOURCE_BYTES)
        lines: list[Any] = []
        try:
            # Chunk by chunk: an error file is as large as the server made it.
            async with await anyio.open_file(f.path, "rb") as source:
                while chunk := await source.read(_WRITE_BYTES):
                    lines += splitter.feed(chunk)
            lines += splitter.finish()
        except NDJSONError as exc:
            raise BulkExportError(f"bulk error file {f.path.name} ({f.ref.type}): {exc}") from None
        found = [o for o in (OperationOutcome.from_json(line) for line in lines) if o is not None]
        if found:
            summary = Counter(
                f"{i.severity or '?'}/{i.code or '?'}" + (f" [{i.epic_code}]" if i.epic_code else "")
                for o in found
                for i in o.issues
            )
            # Severity and codes only: diagnostics can name patients. Epic also puts informational messages
            # in the error file (docs/epic-notes.md §4.4), so only real problems are logged at WARNING.
            serious = any(i.severity in ("fatal", "error", "warning") for o in found for i in o.issues)
            logger.log(
                logging.WARNING if serious else logging.INFO,
                "bulk export error file %s holds %d OperationOutcome(s): %s",
                f.path.name,
                len(found),
                ", ".join(f"{k} x{n}" for k, n in sorted(summary.items())),
            )
        outcomes.extend(found)
    return outcomes


async def download(
    source: FileSource,
    directory: str | os.PathLike[str],
    *,
    types: Sequence[str] | None = None,
    concurrency: int = 4,
    include_errors: bool = True,
    include_deleted: bool = True,
    stats: BulkTransferStats | None = None,
) -> BulkDownloadResult:
    """Download the output files (of ``types``), the error files and the deleted files into ``directory``
    (created if needed).

    ``concurrency`` files at once. Files recorded complete in the directory's sidecar (same URL, same size on
    disk) are skipped, so rerunning after a crash resumes. ``stats`` is updated in place as bytes arrive.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError("concurrency must be an int >= 1 (files downloaded at once)")
    manifest = source.manifest
    root = anyio.Path(directory)
    await root.mkdir(parents=True, exist_ok=True)
    sidecar = root / SIDECAR_NAME
    state = await _load_sidecar(sidecar)
    state.update(status_url=source.status_url, manifest=manifest.to_json())
    done: dict[str, Any] = state["files"]
    outputs = manifest.outputs_of(types)
    errors = manifest.errors if include_errors else ()
    deleted = manifest.deleted if include_deleted else ()
    plan = [
        *((ref, name, "output") for ref, name in zip(outputs, _names(outputs, None), strict=True)),
        *((ref, name, "error") for ref, name in zip(errors, _names(errors, "error"), strict=True)),
        *((ref, name, "deleted") for ref, name in zip(deleted, _names(deleted, "deleted"), strict=True)),
    ]
    stats = stats if stats is not None else BulkTransferStats()
    stats.files_total += len(plan)
    results: dict[int, DownloadedFile] = {}
    lock = anyio.Lock()
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(index: int, ref: BulkFileRef, name: str, kind: str) -> None:
        data = kind == "output"  # resources of the export (stats count them); error counts are advisory
        path = root / name
        async with limiter:
            entry = done.get(ref.url)
            complete = isinstance(entry, dict) and entry.get("name") == name and await path.exists()
            if complete and isinstance(entry, dict) and (await path.stat()).st_size == entry.get("size"):
                results[index] = DownloadedFile(
                    ref, pathlib.Path(path), int(entry.get("lines", 0)), int(entry["size"]), skipped=True
                )
                stats.files_done += 1
                stats.files_skipped += 1
                stats.resources += int(entry.get("lines", 0)) if data else 0
                return
            lines, size = await _fetch_to(source, ref, path, stats, strict=kind != "error")
            results[index] = DownloadedFile(ref, pathlib.Path(path), lines, size)
            stats.files_done += 1
            stats.resources += lines if data else 0
            async with lock:
                done[ref.url] = {"name": name, "type": ref.type, "lines": lines, "size": size}
                await _save_sidecar(sidecar, state)

    try:
        async with anyio.create_task_group() as tg:
            for index, (ref, name, kind) in enumerate(plan):
                tg.start_soon(one, index, ref, name, kind)
    except BaseException as raised:
        inner = unwrap_group(raised)
        if inner is raised:
            raise
        raise inner from None
    await _save_sidecar(sidecar, state)
    first_deleted = len(outputs) + len(errors)
    files = tuple(results[i] for i in range(len(outputs)))
    error_files = tuple(results[i] for i in range(len(outputs), first_deleted))
    deleted_files = tuple(results[i] for i in range(first_deleted, len(plan)))
    outcomes = await _read_outcomes(error_files)
    return BulkDownloadResult(pathlib.Path(root), files, error_files, tuple(outcomes), deleted_files)
