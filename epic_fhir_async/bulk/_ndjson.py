"""Incremental NDJSON splitting (pure, no I/O): bytes in, one JSON value per line out.

Bulk Data files are NDJSON (docs/epic-notes.md §4.4). Real files are not always tidy, so the splitter
tolerates CRLF line ends, a last line without a newline, blank lines and a UTF-8 byte-order mark at the very
start. It keeps only the unfinished tail of the previous chunk, so memory stays flat whatever the file size; a
line split across many chunks is joined once (a list of parts, never repeated ``bytes + bytes``).

Speed matters here (``python -m benchmarks bulk``): splitting bytes by hand beats ``aiter_lines()`` and
``orjson.loads`` is the floor, so the per-chunk loop does one ``split`` and one ``loads`` per line, nothing
else; blank lines are found only on the rare ``JSONDecodeError`` path.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from .. import _json
from .._config import MAX_NDJSON_LINE_BYTES
from .._errors import ResponseTooLarge

__all__ = ["BOM", "NDJSONError", "NDJSONSplitter", "aiter_ndjson_batches"]

BOM = b"\xef\xbb\xbf"


class NDJSONError(ValueError):
    """A non-blank line that is not JSON; ``line`` is its 1-based number (never its content: patient data)."""

    def __init__(self, line: int) -> None:
        super().__init__(f"line {line} is not valid JSON")
        self.line = line


class NDJSONSplitter:
    """Feed byte chunks, get lists of parsed values (``parse=True``) or raw lines (``parse=False``).

    ``lines`` counts the non-blank lines seen so far. Call :meth:`finish` after the last chunk for a final
    line that had no newline. An unfinished line longer than ``max_line`` bytes raises
    :class:`ResponseTooLarge` (a hostile server could otherwise send one endless line, SECURITY.md).
    """

    __slots__ = ("_at_start", "_max_line", "_parse", "_pending", "_pending_size", "lines")

    def __init__(self, *, parse: bool = True, max_line: int = MAX_NDJSON_LINE_BYTES) -> None:
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._max_line = max_line
        self._at_start = True
        self._parse = parse
        self.lines = 0

    def feed(self, chunk: bytes) -> list[Any]:
        """The complete lines of ``chunk`` (plus the pending tail), parsed when ``parse`` is set."""
        if self._at_start:
            self._pending.append(chunk)
            head = b"".join(self._pending)
            self._pending.clear()
            if len(head) < len(BOM) and BOM.startswith(head):
                # Too short to tell whether it is a byte-order mark: decide with the next chunk.
                if head:
                    self._pending.append(head)
                return []
            chunk = head[len(BOM) :] if head.startswith(BOM) else head
            self._at_start = False
        if b"\n" not in chunk:
            if chunk:
                self._pending.append(chunk)
                self._pending_size += len(chunk)
                if self._pending_size > self._max_line:
                    raise self._too_long()
            return []
        parts = chunk.split(b"\n")
        if self._pending:
            # Only the line the previous chunk left unfinished is joined: joining the whole chunk to it
            # first would copy every byte of the body once more (measured ~2% of a bulk read).
            self._pending.append(parts[0])
            parts[0] = b"".join(self._pending)
            self._pending.clear()
        tail = parts.pop()
        self._pending_size = len(tail)
        if tail:
            self._pending.append(tail)
            if self._pending_size > self._max_line:
                raise self._too_long()
        return self._convert(parts)

    def _too_long(self) -> ResponseTooLarge:
        return ResponseTooLarge(
            f"line {self.lines + 1} of an NDJSON body is longer than {self._max_line} bytes "
            "(EpicFHIRClient(max_ndjson_line_bytes=...))",
            limit=self._max_line,
        )

    def finish(self) -> list[Any]:
        """The last line when the body did not end with a newline (``[]`` otherwise)."""
        if not self._pending:
            return []
        rest = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if self._at_start:
            self._at_start = False
            if rest.startswith(BOM):
                rest = rest[len(BOM) :]
        return self._convert([rest])

    def _convert(self, parts: list[bytes]) -> list[Any]:
        if not self._parse:
            kept = [p for p in parts if p and not p.isspace()]  # isspace stops at the first '{'
            self.lines += len(kept)
            return kept
        out: list[Any] = []
        append = out.append
        loads = _json.loads
        for part in parts:
            try:
                append(loads(part))  # JSON whitespace includes "\r": CRLF needs no special case
            except _json.JSONDecodeError:
                if part.strip():
                    raise NDJSONError(self.lines + len(out) + 1) from None
        self.lines += len(out)
        return out


async def aiter_ndjson_batches(chunks: AsyncIterable[bytes]) -> AsyncIterator[list[Any]]:
    """Parsed values of an NDJSON byte stream, one (non-empty) list per chunk that completed lines."""
    splitter = NDJSONSplitter()
    async for chunk in chunks:
        batch = splitter.feed(chunk)
        if batch:
            yield batch
    batch = splitter.finish()
    if batch:
        yield batch
