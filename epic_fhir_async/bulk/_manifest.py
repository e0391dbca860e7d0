"""Bulk Data ``$export`` decisions without I/O: kick-off query, status polling cadence, manifest parsing.

Everything here is pure so it can be unit-tested without a server; :mod:`._bulk` does the HTTP.
Epic behaviour behind it (docs/epic-notes.md §4.1 to §4.4):

* kick-off is Group-level, ``_type`` strongly recommended, ``_since`` unsupported, ``_typeFilter`` with commas
  inside one filter escaped as ``%2C``;
* while running the status URL answers 202 with an empty body; Epic recommends polling every 10 minutes for
  small Groups, every 30 for larger ones, *or exponential backoff*; ``X-Progress`` and ``Retry-After`` may be
  absent, and some servers have sent epoch timestamps in ``Retry-After``;
* the manifest lists ``output``, ``error`` (OperationOutcome NDJSON) and ``deleted`` files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .._errors import ConfigurationError
from .._headers import parse_retry_after
from .._outcome import OperationOutcome

__all__ = [
    "TOO_RECENT_MARKER",
    "BulkFileRef",
    "BulkManifest",
    "BulkProgress",
    "PollCadence",
    "is_too_recent",
    "kickoff_parameters",
    "kickoff_query",
    "parse_manifest",
    "parse_progress_percent",
    "retry_after_delay",
]

#: Epic's kick-off rejection text (docs/epic-notes.md §4.2): one export per client and Group at a time.
TOO_RECENT_MARKER = "requested this group too recently"

# The lookbehind makes a match start only at the beginning of a number: without it a long run of digits
# and no "%" (a hostile X-Progress) backtracks quadratically (64 KB took minutes).
_PERCENT = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*%")


# ------------------------------------------------------------------------------------------- kick-off


def _escape_filter(value: str) -> str:
    # Each filter is one URL-encoded FHIR query; a comma inside it must travel as %2C so the server does not
    # split it (Epic accepts %2C and a backslash escape, docs/epic-notes.md §4.1; %2C is standard encoding).
    return quote(value, safe="")


def kickoff_query(
    *,
    types: Sequence[str] | None,
    type_filters: Sequence[str] | None,
    since: str | None,
    output_format: str | None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The kick-off query string (without ``?``), built by hand so the wire form is exactly Epic's.

    ``_type`` is one comma-joined parameter; each ``_typeFilter`` is its own parameter, fully percent-encoded
    (so its inner commas become ``%2C``). ``since`` goes through as ``_since`` although Epic refuses it.
    """
    parts: list[str] = []
    if types:
        parts.append("_type=" + ",".join(quote(t, safe="") for t in types))
    for value in type_filters or ():
        parts.append("_typeFilter=" + _escape_filter(value))
    if since:
        parts.append("_since=" + quote(since, safe=""))
    if output_format:
        parts.append("_outputFormat=" + quote(output_format, safe=""))
    for name, value in (extra or {}).items():
        parts.append(f"{quote(name, safe='')}={quote(value, safe='')}")
    return "&".join(parts)


def kickoff_parameters(
    *,
    types: Sequence[str] | None,
    type_filters: Sequence[str] | None,
    since: str | None,
    output_format: str | None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The same request as a FHIR ``Parameters`` body, for servers that want a POST kick-off (Bulk 2.0)."""
    params: list[dict[str, Any]] = []
    if types:
        params.append({"name": "_type", "valueString": ",".join(types)})
    params.extend({"name": "_typeFilter", "valueString": f} for f in type_filters or ())
    if since:
        params.append({"name": "_since", "valueInstant": since})
    if output_format:
        params.append({"name": "_outputFormat", "valueString": output_format})
    params.extend({"name": k, "valueString": v} for k, v in (extra or {}).items())
    return {"resourceType": "Parameters", "parameter": params}


def is_too_recent(outcome: OperationOutcome | None) -> bool:
    """Whether a kick-off refusal is Epic's "requested this Group too recently" (docs/epic-notes.md §4.2)."""
    if outcome is None:
        return False
    return any(TOO_RECENT_MARKER in (i.diagnostics or i.details_text or "").lower() for i in outcome.issues)


# --------------------------------------------------------------------------------------------- polling


@dataclass(frozen=True)
class PollCadence:
    """When to poll again if the server gives no ``Retry-After`` (seconds).

    Default: start at 2 s and double up to 600 s (Epic's recommended 10-minute cadence for small Groups,
    docs/epic-notes.md §4.3), so a sandbox or small export is picked up within seconds while a multi-hour one
    settles at one poll per ten minutes after about 20 minutes. ``max_retry_after`` caps a server-requested
    wait.
    """

    initial: float = 2.0
    maximum: float = 600.0
    factor: float = 2.0
    max_retry_after: float = 3600.0
    min_delay: float = 0.5

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.factor < 1:
            raise ConfigurationError("PollCadence needs 0 < initial <= maximum and factor >= 1")

    def backoff(self, polls_without_hint: int) -> float:
        """Delay after the n-th (0-based) consecutive poll that carried no usable ``Retry-After``."""
        return min(self.maximum, self.initial * self.factor ** min(polls_without_hint, 64))


def retry_after_delay(
    value: str | float | None, cadence: PollCadence, *, now: float | None = None
) -> float | None:
    """Seconds to wait from a status response's ``Retry-After`` (the header, or seconds already parsed from
    it), or ``None`` to fall back to the cadence.

    Read by the shared :func:`~epic_fhir_async._headers.parse_retry_after` (delta-seconds, HTTP-dates, epoch
    seconds or milliseconds as instants), then kept to ``[min_delay, max_retry_after]``: a wait beyond the cap
    is ignored (the cadence applies), never slept on.
    """
    seconds = value if isinstance(value, (int, float)) else parse_retry_after(value, now=now)
    if seconds is None or not 0 <= seconds <= cadence.max_retry_after:
        return None
    return max(cadence.min_delay, float(seconds))


def parse_progress_percent(text: str | None) -> float | None:
    """The percentage in an ``X-Progress`` value such as ``"Processing: 40%"``, when it has one."""
    if not text:
        return None
    match = _PERCENT.search(text)
    if match is None:
        return None
    return min(100.0, float(match.group(1)))


@dataclass(frozen=True)
class BulkProgress:
    """One status poll as the progress callback sees it.

    ``text`` is the raw ``X-Progress`` header (``None`` when absent, as at Epic), ``percent`` what could be
    read from it, ``polls`` the polls so far, ``elapsed`` seconds since :meth:`BulkExportJob.wait` began,
    ``next_poll`` the delay chosen before the next one, ``done`` true on the final (manifest) call.
    """

    status_url: str
    text: str | None
    percent: float | None
    polls: int
    elapsed: float
    next_poll: float | None
    done: bool = False


# ---------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class BulkFileRef:
    """One ``output`` / ``error`` / ``deleted`` entry: resource ``type``, absolute ``url``, ``count`` if sent."""

    type: str
    url: str
    count: int | None = None
    extension: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class BulkManifest:
    """The completed export's manifest (Bulk Data "Complete Status" body), pages already merged.

    ``request`` is the kick-off URL as the server recorded it (it may hold patient-identifying parameters:
    do not log it). ``requires_access_token`` says whether file downloads need the bearer token.
    """

    transaction_time: str | None
    request: str | None
    requires_access_token: bool
    outputs: tuple[BulkFileRef, ...] = ()
    errors: tuple[BulkFileRef, ...] = ()
    deleted: tuple[BulkFileRef, ...] = ()
    extension: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def outputs_of(self, types: Sequence[str] | None = None) -> tuple[BulkFileRef, ...]:
        """Output files, only of ``types`` when given."""
        if not types:
            return self.outputs
        wanted = set(types)
        return tuple(f for f in self.outputs if f.type in wanted)

    def expected_counts(self) -> dict[str, int]:
        """Resources per type according to the manifest's ``count`` fields (files without one skipped)."""
        totals: dict[str, int] = {}
        for f in self.outputs:
            if f.count is not None:
                totals[f.type] = totals.get(f.type, 0) + f.count
        return totals

    def merged(self, page: BulkManifest) -> BulkManifest:
        """This manifest followed by the next page's files (Bulk Data 2.0 paged manifests)."""
        return BulkManifest(
            transaction_time=self.transaction_time or page.transaction_time,
            request=self.request or page.request,
            requires_access_token=self.requires_access_token or page.requires_access_token,
            outputs=self.outputs + page.outputs,
            errors=self.errors + page.errors,
            deleted=self.deleted + page.deleted,
            extension={**page.extension, **self.extension},
        )

    def to_json(self) -> dict[str, Any]:
        """The manifest in its wire shape (for saving next to downloaded files)."""

        def refs(items: tuple[BulkFileRef, ...]) -> list[dict[str, Any]]:
            out = []
            for f in items:
                entry: dict[str, Any] = {"type": f.type, "url": f.url}
                if f.count is not None:
                    entry["count"] = f.count
                out.append(entry)
            return out

        data: dict[str, Any] = {
            "transactionTime": self.transaction_time,
            "request": self.request,
            "requiresAccessToken": self.requires_access_token,
            "output": refs(self.outputs),
            "error": refs(self.errors),
        }
        if self.deleted:
            data["deleted"] = refs(self.deleted)
        if self.extension:
            data["extension"] = dict(self.extension)
        return data


def _refs(value: Any, what: str) -> tuple[BulkFileRef, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"manifest {what!r} is not a list")  # noqa: TRY004  (bad data, not a bad call)
    refs = []
    for entry in value:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("url"), str):
            raise ValueError(f"manifest {what!r} entry without a url")  # noqa: TRY004
        count = entry.get("count")
        ext = entry.get("extension")
        refs.append(
            BulkFileRef(
                type=str(entry.get("type") or ""),
                url=entry["url"],
                count=count if isinstance(count, int) and not isinstance(count, bool) else None,
                extension=dict(ext) if isinstance(ext, Mapping) else {},
            )
        )
    return tuple(refs)


def parse_manifest(data: Any) -> tuple[BulkManifest, str | None]:
    """Parse one manifest page; returns it and the ``link`` ``next`` URL when the manifest is paged.

    Lenient about absent fields (Epic's exact field set is unverified, docs/epic-notes.md §4.4); strict about
    shape: a body that is not an object, or a file entry without a ``url``, raises ``ValueError``.
    """
    if not isinstance(data, Mapping):
        raise ValueError("manifest is not a JSON object")  # noqa: TRY004
    requires = data.get("requiresAccessToken")
    next_url = None
    links = data.get("link")
    if isinstance(links, list):
        for link in links:
            if (
                isinstance(link, Mapping)
                and link.get("relation") == "next"
                and isinstance(link.get("url"), str)
            ):
                next_url = link["url"]
    ext = data.get("extension")
    manifest = BulkManifest(
        transaction_time=data.get("transactionTime")
        if isinstance(data.get("transactionTime"), str)
        else None,
        request=data.get("request") if isinstance(data.get("request"), str) else None,
        # Absent means "not required" in the spec, but a server that omits it may still want the token;
        # we send it only to the FHIR origin anyway, so treat anything but an explicit false as true.
        requires_access_token=requires is not False,
        outputs=_refs(data.get("output"), "output"),
        errors=_refs(data.get("error"), "error"),
        deleted=_refs(data.get("deleted"), "deleted"),
        extension=dict(ext) if isinstance(ext, Mapping) else {},
    )
    return manifest, next_url
