"""Epic-shaped FHIR ids and fixed-anchor timestamps for the sandbox's synthetic data.

Epic FHIR ids use letters, digits, ``.`` and ``-``; short ids look like ``e`` + 22 chars + ``3`` (24 chars)
and long ones like ``f`` + 44 chars (45), docs/epic-notes.md §3.12 and §6. Dates never read the wall clock:
they are an anchor (2026-01-01T00:00:00Z) minus seeded offsets, so a seed always yields the same data.
"""

from __future__ import annotations

import base64
import random
import time

ANCHOR_EPOCH = 1767225600  # 2026-01-01T00:00:00Z
DAY = 86400
_ID_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")


def short_id(rng: random.Random) -> str:
    """A 24-char Epic id (``e`` + 22 chars + ``3``), as Epic uses for Patient, Encounter, Binary, ..."""
    raw = base64.b64encode(rng.getrandbits(136).to_bytes(17, "big"), altchars=b".-")
    return "e" + raw[:22].decode("ascii") + "3"


def long_id(rng: random.Random) -> str:
    """A 45-char Epic id (``f`` + 44 chars), as Epic uses for Observation, AllergyIntolerance, RTF Binary, ..."""
    raw = base64.b64encode(rng.getrandbits(264).to_bytes(33, "big"), altchars=b".-")
    return "f" + raw.decode("ascii")


def is_epic_id(value: str) -> bool:
    """True when ``value`` looks like an Epic FHIR id (24-64 chars of letters, digits, ``.``, ``-``)."""
    return 24 <= len(value) <= 64 and _ID_ALPHABET.issuperset(value)


def timestamp(seconds_before_anchor: int) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` for the anchor minus ``seconds_before_anchor`` (Epic's dateTime shape)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ANCHOR_EPOCH - seconds_before_anchor))


def date(seconds_before_anchor: int) -> str:
    """``YYYY-MM-DD`` for the anchor minus ``seconds_before_anchor``."""
    return time.strftime("%Y-%m-%d", time.gmtime(ANCHOR_EPOCH - seconds_before_anchor))
