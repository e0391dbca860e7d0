"""The only module that imports orjson: one place to swap or tune the JSON codec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

#: Decode JSON; raises :class:`JSONDecodeError` (a ``ValueError``) on malformed input. orjson's function itself,
#: not a wrapper: bulk streams call it once per NDJSON line, where a wrapper's call overhead shows.
loads: Callable[[bytes | bytearray | memoryview | str], Any] = orjson.loads


def dumps(obj: Any) -> bytes:
    """Encode to compact UTF-8 JSON bytes."""
    return orjson.dumps(obj)


def dumps_line(obj: Any) -> bytes:
    """Encode as one NDJSON line (with its trailing newline)."""
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
