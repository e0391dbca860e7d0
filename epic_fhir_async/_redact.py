"""URL redaction (pure): what of a URL may appear in an error message or a log line.

A leaf module: the resource type table is its only import, so every layer can redact without import cycles.
"""

from __future__ import annotations

import httpx

from ._r4_types import R4_RESOURCE_TYPES

__all__ = ["redact_url"]

#: Segments after a resource type that name an interaction, not a record: kept by :func:`redact_url`.
_PATH_KEYWORDS = frozenset({"_history", "_search"})
#: Epic's bulk status and file URLs are ``BulkRequest/<job>[/<file>]`` (the sandbox's too): opaque ids follow.
_ID_PARENTS = R4_RESOURCE_TYPES | {"BulkRequest"}
_MASK = "***"


def _looks_opaque(segment: str) -> bool:
    # An id outside a typed path (a bulk file on a storage host, a UUID): long, with letters and digits. Base
    # paths such as "interconnect-fhir-oauth" or "api/FHIR/R4" stay readable.
    return (
        len(segment) >= 20
        and any(c.isdigit() for c in segment)
        and any(c.isalpha() for c in segment)
        and segment != _MASK
    )


def _redact_path(path: str) -> str:
    segments = path.split("/")
    after_type = False
    for index, segment in enumerate(segments):
        if segment in _ID_PARENTS:
            after_type = True  # a compartment search (Patient/x/Observation) keeps the second type too
        elif after_type:
            if segment and not segment.startswith("$") and segment not in _PATH_KEYWORDS:
                segments[index] = _MASK
        elif _looks_opaque(segment):
            segments[index] = _MASK
    return "/".join(segments)


def redact_url(url: httpx.URL | str) -> str:
    """The URL without query, fragment, user info or record ids: what is safe to show in logs and errors.

    Every path segment after a resource type is masked (``Patient/***``, ``Group/***/$export``,
    ``Observation/***/_history/***``) except ``$operation`` names, ``_history``, ``_search`` and further type
    names; so are bulk status/file ids and long opaque segments elsewhere. FHIR ids name a patient's records,
    and query strings carry patient identifiers.
    """
    u = httpx.URL(str(url))
    port = f":{u.port}" if u.port is not None else ""
    path = _redact_path(u.path)
    return f"{u.scheme}://{u.host}{port}{path}" if u.host else path
