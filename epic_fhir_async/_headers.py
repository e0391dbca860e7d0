"""Response headers the SDK interprets (pure): ``Retry-After``, ``WWW-Authenticate`` and the media type.

A leaf module, so that errors, every retry loop and bulk polling share one reading of each header.
"""

from __future__ import annotations

import math
import re
import time
from email.utils import parsedate_to_datetime

__all__ = ["media_type", "parse_retry_after", "parse_www_authenticate"]

#: A bare number at least this large is an instant, not a wait: 10^9 s is 31 years, while Unix time has been
#: past 10^9 since 2001. Bulk Data servers have been seen sending epoch seconds and epoch milliseconds here.
_EPOCH_SECONDS = 1e9
_EPOCH_MILLISECONDS = 1e12


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value.

    Accepts delta-seconds and an HTTP-date (RFC 9110 §10.2.3) and, because real servers send them, a Unix
    timestamp in seconds or milliseconds, read as an instant. Returns ``None`` when absent or unparsable,
    ``0.0`` for instants in the past. The result is *not* capped: each caller compares it with its own cap.
    ``now`` is the wall clock (``time.time()``) for dates and timestamps.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isnan(seconds) or math.isinf(seconds):
            return None
        if seconds >= _EPOCH_SECONDS:
            instant = seconds / 1000.0 if seconds >= _EPOCH_MILLISECONDS else seconds
            return max(0.0, instant - (time.time() if now is None else now))
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


# A match starts only at the beginning of a token (the lookbehind): otherwise a long run of token characters
# without "=" backtracks quadratically, and a hostile server's 64 KB header took over a minute to parse.
_AUTH_PARAM = re.compile(r'(?<![A-Za-z0-9_\-])([A-Za-z0-9_\-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_www_authenticate(value: str | None) -> dict[str, str]:
    """Parse a ``Bearer`` challenge's auth-params (``error``, ``error_description``, ``scope``, ...).

    Lenient: unknown schemes, stray commas and missing quotes are tolerated; a bad header gives ``{}``.
    """
    if not value:
        return {}
    text = value.strip()
    scheme, _, rest = text.partition(" ")
    if "=" in scheme:  # no scheme at all, only params
        rest = text
    params: dict[str, str] = {}
    for match in _AUTH_PARAM.finditer(rest):
        key = match.group(1).lower()
        quoted = match.group(2)
        params[key] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match.group(3)
    return params


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` value, lower-cased, without parameters (``""`` when absent)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()
