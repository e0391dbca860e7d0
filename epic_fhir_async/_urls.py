"""URLs (pure): origins, joining server references, redaction for messages, and the FHIR names that become
path segments.

* Origins: a bearer token goes only to the FHIR base's origin (RFC 6454: scheme, host, effective port), and
  plain ``http://`` is allowed only on loopback.
* Joining: ``Location``, ``Content-Location``, next links and bulk file URLs come from the server; a malformed
  one raises :class:`EpicFHIRError` without showing it (server URLs carry patient identifiers).
* Redaction: what of a URL may appear in an error message or a log line (:func:`redact_url`).
* Names: ``client.read("Patient", "../metadata")`` or an id holding ``/``, ``?`` or ``#`` would send another
  request than the caller meant (path injection), so every value that becomes a path segment is checked first.
  Messages never repeat an id: they give its length and the offending character instead.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import httpx

from ._errors import ConfigurationError, EpicFHIRError
from ._r4_types import R4_RESOURCE_TYPES, R4_TYPES_BY_LOWER

__all__ = [
    "MAX_ID_LENGTH",
    "check_id",
    "check_operation",
    "check_type",
    "is_loopback",
    "join_url",
    "redact_url",
    "same_origin",
]


# -- origins and joining ----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (the one place plain ``http://`` is allowed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    """RFC 6454 origin equality: scheme, host and (effective) port."""
    return a.scheme == b.scheme and a.host == b.host and _port(a) == _port(b)


def _port(url: httpx.URL) -> int | None:
    if url.port is not None:
        return url.port
    return {"http": 80, "https": 443}.get(url.scheme)


def join_url(base: httpx.URL | str, reference: str) -> httpx.URL:
    """``reference`` (a Location, Content-Location, next link or file URL from the server) resolved against
    ``base``; a malformed one raises :class:`EpicFHIRError` instead of httpx's ``InvalidURL``.

    The text is not shown: server URLs carry patient identifiers. Origin checks are the caller's job.
    """
    try:
        return httpx.URL(base).join(reference)
    except httpx.InvalidURL:
        raise EpicFHIRError("the server sent an invalid URL (not shown: it may hold identifiers)") from None


# -- redaction --------------------------------------------------------------------------------------------

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


# -- FHIR names that become path segments -----------------------------------------------------------

#: R4 allows 64 characters (http://hl7.org/fhir/R4/datatypes.html#id); Epic's ids can be longer (bulk data,
#: docs/epic-notes.md §3.12 and §4.6), so only the character set is R4's and the cap is generous.
MAX_ID_LENGTH = 256
_ID = re.compile(r"[A-Za-z0-9\-.]+")
_TYPE = re.compile(r"[A-Z][A-Za-z]+")
_OPERATION = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")
_ID_RULE = "FHIR ids are 1-64 letters, digits, '-' and '.' (Epic's may be longer)"


def _first_bad(value: str, allowed: re.Pattern[str]) -> str:
    for index, char in enumerate(value):
        if not allowed.fullmatch(char):
            shown = repr(char) if char.isprintable() and not char.isspace() else f"U+{ord(char):04X}"
            return f"character {shown} at position {index + 1}"
    return "no bad character"  # pragma: no cover - callers only ask about values that failed the pattern


def check_id(value: Any, *, what: str = "resource id") -> str:
    """``value`` if it is a valid FHIR id, else :class:`ConfigurationError` saying what is wrong (not the id)."""
    if not isinstance(value, str):
        raise ConfigurationError(f"the {what} must be a str, got {type(value).__name__}")
    if not value:
        raise ConfigurationError(f"the {what} is empty: {_ID_RULE}")
    if len(value) > MAX_ID_LENGTH:
        raise ConfigurationError(
            f"the {what} is {len(value)} characters long, more than {MAX_ID_LENGTH}: {_ID_RULE}"
        )
    if _ID.fullmatch(value):
        if value.strip(".") == "":  # "." and ".." are dot-segments: URL resolution would drop them
            raise ConfigurationError(f"the {what} consists only of dots: {_ID_RULE}")
        return value
    hint = ""
    if "/" in value:
        hint = "; pass the type and the id separately (read('Patient', id)), not a reference or URL"
    elif "?" in value or "&" in value or "=" in value:
        hint = "; to search, use client.search(type, **params)"
    raise ConfigurationError(
        f"the {what} ({len(value)} characters) is not a FHIR id: {_first_bad(value, _ID)} is not allowed; "
        f"{_ID_RULE}{hint}"
    )


def check_type(value: Any) -> str:
    """``value`` if it can be a FHIR resource type, else :class:`ConfigurationError` with a suggestion.

    A name with the pattern of a type but not in R4 is accepted (the server decides); a known name in the
    wrong case is refused, since Epic answers it with an IIS 404 page (docs/epic-notes.md §3.7).
    """
    if isinstance(value, str) and value in R4_RESOURCE_TYPES:
        return value
    if not isinstance(value, str):
        raise ConfigurationError(f"the resource type must be a str, got {type(value).__name__}")
    known = R4_TYPES_BY_LOWER.get(value.lower())
    if known is not None:
        raise ConfigurationError(
            f"unknown resource type {value!r}: FHIR type names are case-sensitive; did you mean {known!r}?"
        )
    if _TYPE.fullmatch(value):
        return value
    if not value:
        raise ConfigurationError("the resource type is empty: pass a FHIR type such as 'Patient'")
    # Show the value only when it is a plain word: a misplaced id or URL may hold patient data.
    shown = repr(value) if value.isalpha() and len(value) <= 64 else f"({len(value)} characters)"
    if value.isalpha():
        problem = "must start with a capital letter"
    else:
        problem = f"has {_first_bad(value, re.compile('[A-Za-z]'))}"
    suggestion = ""
    if value.isalpha() and value[0].islower():
        suggestion = f"; did you mean {value[0].upper() + value[1:]!r}?"
    elif "/" in value or "?" in value:
        suggestion = "; pass the type alone (e.g. 'Patient'), with ids and search parameters separately"
    raise ConfigurationError(
        f"the resource type {shown} {problem}: a FHIR resource type is a capitalised name such as "
        f"'Patient' or 'Observation'{suggestion}"
    )


def check_operation(name: Any) -> str:
    """``name`` as ``$name``; :class:`ConfigurationError` unless it is a plain operation name."""
    if not isinstance(name, str):
        raise ConfigurationError(f"the operation name must be a str, got {type(name).__name__}")
    bare = name[1:] if name.startswith("$") else name
    if not _OPERATION.fullmatch(bare):
        shown = repr(name) if len(name) <= 64 and name.isprintable() else f"({len(name)} characters)"
        raise ConfigurationError(
            f"the operation name {shown} is not a FHIR operation name: use a word such as '$everything' or "
            "'export'; pass the type and id with type= and id=, parameters with params= or parameters="
        )
    return f"${bare}"
