"""The only module that imports orjson: one place to swap or tune the JSON codec."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON; raises :class:`JSONDecodeError` (a ``ValueError``) on malformed input."""
    return orjson.loads(data)


def dumps(obj: Any) -> bytes:
    """Encode to compact UTF-8 JSON bytes."""
    return orjson.dumps(obj)


def dumps_line(obj: Any) -> bytes:
    """Encode as one NDJSON line (with its trailing newline)."""
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
