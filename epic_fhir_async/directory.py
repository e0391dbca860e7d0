"""Epic's endpoint directory: find an organisation's FHIR R4 base URL by its name (docs/epic-notes.md §5.1).

Every Epic customer has its own FHIR base URL. Epic publishes them as a FHIR Bundle of Endpoint resources
(:data:`EPIC_R4_ENDPOINTS_URL`) and as a SMART User-access Brands bundle of Organizations linked to Endpoints
(:data:`EPIC_BRANDS_URL`). Both load here, from a file you saved or from their URL::

    directory = await EndpointDirectory.fetch(cache_dir="~/.cache/epic-fhir")
    entries = directory.search("mass general")  # case- and accent-insensitive, partial words: .name, .base_url
    async with directory.client("Massachusetts General", auth=auth) as client:
        ...

Downloads go through the SDK's HTTP session (a deadline, a size bound, retries on 5xx and 429) and, with a
``cache_dir``, are kept on disk with their ``ETag`` / ``Last-Modified`` and revalidated with a conditional
request. Epic asks apps not to fetch the large Brands bundle at run time: download it once in a while (this
cache does that) or ship a copy. Parsing and file I/O run in a worker thread, never on the event loop.

Not imported by ``import epic_fhir_async``: import this module when you use it.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import logging
import os
import re
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from . import _json
from ._client import EpicFHIRClient
from ._config import JSON_CONTENT_TYPES, LOGGER_NAME, USER_AGENT
from ._errors import ConfigurationError, EpicFHIRError, RateLimited, ServerError, TransportError
from ._headers import media_type
from ._http import HTTPSession, transport_error, unexpected_content
from ._retry import RetryPolicy
from ._urls import is_loopback, redact_url

__all__ = [
    "EPIC_BRANDS_URL",
    "EPIC_R4_ENDPOINTS_URL",
    "DirectoryEntry",
    "EndpointDirectory",
]

log = logging.getLogger(f"{LOGGER_NAME}.directory")

#: Epic's directory of R4 endpoints: a ``collection`` Bundle of Endpoints with contained Organizations.
EPIC_R4_ENDPOINTS_URL = "https://open.epic.com/Endpoints/R4"
#: Epic's SMART User-access Brands bundle: Organizations and Endpoints (tens of megabytes).
EPIC_BRANDS_URL = "https://open.epic.com/Endpoints/Brands"

_DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # the Brands bundle was ~85 MB in 2026 (docs/epic-notes.md §5.1)
_DEFAULT_DEADLINE = 120.0
_DEFAULT_MAX_AGE = 24 * 3600.0
_FHIR_VERSION_EXTENSION = "http://hl7.org/fhir/StructureDefinition/endpoint-fhir-version"
_RETIRED_STATUSES = frozenset({"off", "entered-in-error"})
_VERSION_SEGMENTS = {"R4": "R4", "STU3": "STU3", "DSTU2": "DSTU2"}
_MAX_PART_OF_DEPTH = 16  # brand hierarchies are shallow; a cycle must not loop forever


# -- names, folded -------------------------------------------------------------------------------------------

# Letters that NFKD does not split into a base letter and a combining mark.
_UNSPLIT = str.maketrans(
    {"ø": "o", "ł": "l", "đ": "d", "ð": "d", "æ": "ae", "œ": "oe", "þ": "th", "\u0131": "i"}
)
_APOSTROPHES = str.maketrans({"'": None, "\u2019": None, "\u02bc": None})
_WORD = re.compile(r"[^\W_]+")
_AFTER_ALL = "\U0010ffff"  # sorts after any text: a prefix's range ends before prefix + _AFTER_ALL


def _fold(text: str) -> str:
    """Lower case without accents: ``"Hôpital Saint-Éloi"`` → ``"hopital saint-eloi"``."""
    folded = text.casefold()
    if folded.isascii():  # most names: nothing to strip
        return folded
    decomposed = unicodedata.normalize("NFKD", folded)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).translate(_UNSPLIT)


def _words(text: str) -> list[str]:
    # "St. Mary's" is found as "st marys" and as "mary": an apostrophe joins, every other mark splits.
    return _WORD.findall(_fold(text).translate(_APOSTROPHES))


# -- entries -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One organisation and one of its FHIR endpoints.

    ``name`` is the organisation's name (``""`` when the directory gives none); ``base_url`` the FHIR base
    without a trailing slash; ``fhir_version`` ``"R4"``, ``"STU3"``, ``"DSTU2"`` or ``""`` when the
    directory does not say; ``status`` the Endpoint's status (``"active"`` when absent); ``retired`` is true
    for an endpoint that is ``off``, ``entered-in-error``, past its ``period.end``, or whose organisation is
    not ``active``. ``aliases`` are other names of the organisation (Brands bundles), searched like ``name``.
    """

    name: str
    base_url: str
    fhir_version: str = "R4"
    status: str = "active"
    retired: bool = False
    endpoint_id: str = ""
    organization_id: str = ""
    aliases: tuple[str, ...] = ()

    def client(self, **kwargs: Any) -> EpicFHIRClient:
        """An :class:`~epic_fhir_async.EpicFHIRClient` for this endpoint; ``kwargs`` go to its constructor
        (``auth=``, ``epic_client_id=``, ...)."""
        if self.retired:
            raise ConfigurationError(
                f"the endpoint of {self.name or self.base_url!r} is retired ({self.status}): choose another"
            )
        return EpicFHIRClient(self.base_url, **kwargs)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _list(value: Any) -> list[Any]:
    # A directory is input: a field that should be a list and is not counts as absent.
    return value if isinstance(value, list) else []


def _version(endpoint: Mapping[str, Any], address: str) -> str:
    for extension in _list(endpoint.get("extension")):
        if isinstance(extension, Mapping) and extension.get("url") == _FHIR_VERSION_EXTENSION:
            code = _text(extension.get("valueCode"))
            if code.startswith("4.0"):
                return "R4"
            if code.startswith("3.0"):
                return "STU3"
            if code.startswith(("1.0", "0.")):
                return "DSTU2"
    return _VERSION_SEGMENTS.get(address.rsplit("/", 1)[-1].upper(), "")


def _ended(period: Any, today: str) -> bool:
    end = _text(period.get("end")) if isinstance(period, Mapping) else ""
    return bool(end) and end[:10] < today  # ISO dates compare as text


def _reference_id(reference: Any) -> str:
    text = _text(reference.get("reference")) if isinstance(reference, Mapping) else ""
    return text.rsplit("/", 1)[-1].lstrip("#")


@dataclass
class _Endpoint:
    id: str
    full_url: str
    address: str
    version: str
    status: str
    retired: bool
    name: str


def _endpoint(entry: Mapping[str, Any], resource: Mapping[str, Any], today: str) -> _Endpoint | None:
    address = _text(resource.get("address")).rstrip("/")
    if not address.startswith(("https://", "http://")):
        return None  # not a FHIR REST address (or none at all): nothing a client could use
    status = _text(resource.get("status")) or "active"
    retired = status in _RETIRED_STATUSES or _ended(resource.get("period"), today)
    name = _text(resource.get("name"))
    if not name:  # the Endpoints/R4 layout names the organisation in a contained resource
        managing = resource.get("managingOrganization")
        wanted = _reference_id(managing)
        for contained in _list(resource.get("contained")):
            if isinstance(contained, Mapping) and contained.get("id") == wanted:
                name = _text(contained.get("name"))
        if not name and isinstance(managing, Mapping):
            name = _text(managing.get("display"))
    return _Endpoint(
        id=_text(resource.get("id")),
        full_url=_text(entry.get("fullUrl")),
        address=address,
        version=_version(resource, address),
        status=status,
        retired=retired,
        name=name,
    )


def _parse(bundle: Any, *, today: str | None = None) -> tuple[list[DirectoryEntry], int]:
    """The entries of an Endpoints bundle or a Brands bundle, and how many entries were skipped."""
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise EpicFHIRError(
            "not an endpoint directory: expected a FHIR Bundle of Endpoints (and Organizations)"
        )
    today = today or datetime.now(timezone.utc).date().isoformat()
    endpoints: dict[str, _Endpoint] = {}
    organizations: list[Mapping[str, Any]] = []
    skipped = 0
    raw_entries = bundle.get("entry") or ()
    if not isinstance(raw_entries, list):
        raise EpicFHIRError("not an endpoint directory: Bundle.entry is not a list")
    for entry in raw_entries:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        kind = resource.get("resourceType") if isinstance(resource, Mapping) else None
        if kind == "Endpoint":
            endpoint = _endpoint(entry, resource, today)  # type: ignore[arg-type]
            if endpoint is None:
                skipped += 1
                continue
            key = endpoint.id or endpoint.full_url or endpoint.address
            endpoints[key] = endpoint
            if endpoint.full_url:
                endpoints.setdefault(endpoint.full_url, endpoint)
        elif kind == "Organization":
            organizations.append(resource)  # type: ignore[arg-type]
        else:
            skipped += 1
    by_org_id = {_text(o.get("id")): o for o in organizations if _text(o.get("id"))}

    def own_endpoints(org: Mapping[str, Any]) -> list[_Endpoint]:
        found = []
        for ref in _list(org.get("endpoint")):
            text = _text(ref.get("reference")) if isinstance(ref, Mapping) else ""
            endpoint = endpoints.get(text) or endpoints.get(text.rsplit("/", 1)[-1])
            if endpoint is not None:
                found.append(endpoint)
        return found

    def inherited(org: Mapping[str, Any]) -> list[_Endpoint]:
        # A facility without endpoints of its own uses its brand's (SMART Brands: Organization.partOf).
        seen: set[str] = set()
        current: Mapping[str, Any] | None = org
        for _ in range(_MAX_PART_OF_DEPTH):
            if current is None:
                break
            found = own_endpoints(current)
            if found:
                return found
            parent = _reference_id(current.get("partOf"))
            if not parent or parent in seen:
                break
            seen.add(parent)
            current = by_org_id.get(parent)
        return []

    entries: list[DirectoryEntry] = []
    claimed: set[int] = set()
    for org in organizations:
        name = _text(org.get("name"))
        aliases = tuple(a for a in (_text(x) for x in _list(org.get("alias"))) if a)
        inactive = org.get("active") is False
        for endpoint in inherited(org):
            claimed.add(id(endpoint))
            entries.append(
                DirectoryEntry(
                    name=name or endpoint.name,
                    base_url=endpoint.address,
                    fhir_version=endpoint.version,
                    status=endpoint.status,
                    retired=endpoint.retired or inactive,
                    endpoint_id=endpoint.id,
                    organization_id=_text(org.get("id")),
                    aliases=aliases,
                )
            )
    listed: set[int] = set()
    for endpoint in endpoints.values():  # the Endpoints/R4 layout, and Brands endpoints no Organization names
        if id(endpoint) in claimed or id(endpoint) in listed:
            continue
        listed.add(id(endpoint))
        entries.append(
            DirectoryEntry(
                name=endpoint.name,
                base_url=endpoint.address,
                fhir_version=endpoint.version,
                status=endpoint.status,
                retired=endpoint.retired,
                endpoint_id=endpoint.id,
            )
        )
    return entries, skipped


def _parse_bytes(data: bytes) -> tuple[list[DirectoryEntry], int]:
    try:
        bundle = _json.loads_pausing_gc(data)
    except ValueError:
        raise EpicFHIRError("not an endpoint directory: the document is not valid JSON") from None
    return _parse(bundle)


# -- the directory -------------------------------------------------------------------------------------------


class EndpointDirectory:
    """A loaded endpoint directory, indexed for search by organisation name.

    Build it with :meth:`fetch` (a URL, cached on disk), :meth:`from_file`, :meth:`from_bytes` or
    :meth:`from_bundle`. ``entries`` holds every usable entry, every FHIR version, retired ones included;
    :meth:`search` narrows them. Lookups use an in-memory word index: a name search over tens of thousands
    of entries takes microseconds.
    """

    def __init__(self, entries: Iterable[DirectoryEntry], *, source: str = "", skipped: int = 0) -> None:
        # One organisation listed twice for the same endpoint (a Brands bundle does that) is one entry.
        unique: dict[tuple[str, str], DirectoryEntry] = {}
        for entry in entries:
            unique.setdefault((entry.name, entry.base_url), entry)
        split: dict[str, list[str]] = {}  # names repeat (facilities of one brand, one name per endpoint)

        def words_of(text: str) -> list[str]:
            found = split.get(text)
            if found is None:
                found = split[text] = _words(text)
            return found

        keyed = sorted((" ".join(words_of(e.name)), e.base_url, e) for e in unique.values())
        self.entries: tuple[DirectoryEntry, ...] = tuple(e for _, _, e in keyed)
        #: where it came from (a URL or a file name), for messages
        self.source = source
        #: bundle entries that were not usable endpoints (no http(s) address, other resource types)
        self.skipped = skipped
        # The index: entries sorted by folded name (names that start with a query are one slice of it), each
        # entry's words as " w1 w2 ..." (a word-start test is one substring search), and a sorted word list
        # with the entries holding each word (a query word's prefix range is one bisect).
        self._folded = [name for name, _, _ in keyed]
        self._haystacks: list[str] = []
        postings: dict[str, list[int]] = {}
        for index, entry in enumerate(self.entries):
            words: list[str] = []
            for text in (entry.name, *entry.aliases):
                words += words_of(text)
            if not words:  # no name anywhere: the host still finds it ("fhir.example.org" by "example")
                words = _words((urlsplit(entry.base_url).hostname or "").replace(".", " "))
            unique_words = list(dict.fromkeys(words))
            self._haystacks.append(" " + " ".join(unique_words))
            for word in unique_words:
                postings.setdefault(word, []).append(index)
        self._words = sorted(postings)
        self._postings = [postings[w] for w in self._words]
        self._cumulative = [0, *itertools.accumulate(len(p) for p in self._postings)]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[DirectoryEntry]:
        return iter(self.entries)

    def __repr__(self) -> str:
        return f"<EndpointDirectory {len(self.entries)} entries from {self.source or 'memory'}>"

    # -- building ---------------------------------------------------------------------------------------

    @classmethod
    def from_bundle(cls, bundle: Mapping[str, Any], *, source: str = "") -> EndpointDirectory:
        """From a parsed Endpoints or Brands bundle (a dict). Raises :class:`~epic_fhir_async.EpicFHIRError`
        when it is not a Bundle."""
        entries, skipped = _parse(bundle)
        return cls(entries, source=source, skipped=skipped)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "") -> EndpointDirectory:
        """From the JSON bytes of a bundle (CPU-bound: in async code prefer :meth:`from_file` or
        ``anyio.to_thread.run_sync``)."""
        entries, skipped = _parse_bytes(data)
        return cls(entries, source=source, skipped=skipped)

    @classmethod
    async def from_file(
        cls, path: str | os.PathLike[str], *, max_bytes: int | None = _DEFAULT_MAX_BYTES
    ) -> EndpointDirectory:
        """From a bundle saved on disk (read and parsed in a worker thread). ``max_bytes`` bounds the file."""

        def load() -> EndpointDirectory:
            file = Path(path).expanduser()
            with file.open("rb") as handle:
                data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
            if max_bytes is not None and len(data) > max_bytes:
                raise ConfigurationError(f"{file} is larger than max_bytes={max_bytes}: raise the limit")
            return cls.from_bytes(data, source=str(file))

        return await anyio.to_thread.run_sync(load)

    @classmethod
    async def fetch(
        cls,
        url: str = EPIC_R4_ENDPOINTS_URL,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        max_age: float = _DEFAULT_MAX_AGE,
        deadline: float = _DEFAULT_DEADLINE,
        max_bytes: int = _DEFAULT_MAX_BYTES,
        stale_if_error: bool = True,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> EndpointDirectory:
        """Download a directory (by default Epic's R4 endpoints; :data:`EPIC_BRANDS_URL` for the Brands bundle).

        With ``cache_dir`` the body is kept on disk with its ``ETag`` and ``Last-Modified``: a copy younger
        than ``max_age`` seconds is used without a request, an older one is revalidated (a ``304`` keeps it),
        and when the server cannot be reached or fails, a stale copy is used (``stale_if_error``) with a
        warning logged. ``deadline`` bounds the whole download in seconds (retries included) and ``max_bytes`` bounds
        the body (:class:`~epic_fhir_async.ResponseTooLarge`); 5xx, 429 and connection errors are retried.
        ``retry``, ``transport`` and ``http_client`` as for :class:`~epic_fhir_async.EpicFHIRClient`.
        """
        target = httpx.URL(url)
        if target.scheme != "https" and not (target.scheme == "http" and is_loopback(target.host)):
            raise ConfigurationError(f"the directory URL must be https:// (or http:// on loopback): {url!r}")
        if deadline <= 0 or max_bytes <= 0 or max_age < 0:
            raise ConfigurationError("deadline and max_bytes must be positive and max_age not negative")
        cache = _Cache(cache_dir, str(target)) if cache_dir is not None else None
        cached = await anyio.to_thread.run_sync(cache.read_meta) if cache is not None else None
        if cache is not None and cached is not None and time.time() - cached.stored_at < max_age:
            return await cache.load(cls, max_bytes)
        try:
            response = await _download(target, cached, deadline, max_bytes, retry, transport, http_client)
        except (TransportError, ServerError, RateLimited) as exc:
            if cache is None or cached is None or not stale_if_error:
                raise
            status = getattr(exc, "status_code", None)
            log.warning(
                "endpoint directory %s unreachable (%s): using the copy cached %.0f s ago",
                redact_url(target),
                status or type(exc).__name__,
                time.time() - cached.stored_at,
            )
            return await cache.load(cls, max_bytes)
        if response.status_code == 304 and cache is not None and cached is not None:
            await anyio.to_thread.run_sync(cache.touch, cached)
            return await cache.load(cls, max_bytes)
        if response.status_code != 200:
            raise EpicFHIRError(
                f"unexpected HTTP {response.status_code} for the endpoint directory {redact_url(target)}"
            )
        if media_type(response.headers.get("content-type")) not in JSON_CONTENT_TYPES:
            raise unexpected_content(response)
        body = response.content

        def parse_and_store() -> EndpointDirectory:
            directory = cls.from_bytes(body, source=str(target))
            if cache is not None:  # only a document that parsed is kept
                cache.store(body, response.headers.get("etag"), response.headers.get("last-modified"))
            return directory

        return await anyio.to_thread.run_sync(parse_and_store)

    # -- lookups ----------------------------------------------------------------------------------------

    def _matching(self, tokens: Sequence[str]) -> Iterator[int]:
        """Indices of the entries that hold every token as the start of a word, in order, lazily."""
        words, cumulative = self._words, self._cumulative
        best: tuple[int, int, int, str] | None = None
        for token in tokens:  # walk the rarest token's entries, test the others
            lo = bisect.bisect_left(words, token)
            hi = bisect.bisect_left(words, token + _AFTER_ALL, lo)
            size = cumulative[hi] - cumulative[lo]
            if best is None or size < best[0]:
                best = (size, lo, hi, token)
        assert best is not None
        size, lo, hi, chosen = best
        if not size:
            return
        lists = self._postings[lo:hi]
        stream: Iterable[int] = lists[0] if len(lists) == 1 else heapq.merge(*lists)
        needles = [f" {t}" for t in tokens if t != chosen]
        haystacks = self._haystacks
        last = -1
        for index in stream:
            if index != last and all(n in haystacks[index] for n in needles):
                yield index
            last = index  # an entry can hold several words of the range ("saint", "salem" for "sa")

    def search(
        self,
        name: str,
        *,
        limit: int | None = 20,
        fhir_version: str | None = "R4",
        include_retired: bool = False,
    ) -> list[DirectoryEntry]:
        """Entries whose organisation name (or alias) holds every word of ``name`` as the start of a word,
        ignoring case and accents: ``"mass gen"`` finds "Massachusetts General Hospital", ``"hopital"``
        "Hôpital ...". Exact names come first, then names that start with the query, then the rest in
        alphabetical order.

        ``fhir_version``: ``"R4"`` (default) keeps R4 endpoints and those whose version the directory does
        not say; ``None`` keeps every version. Retired endpoints are left out unless ``include_retired``.
        ``limit``: at most that many entries (``None``: all).
        """
        if not isinstance(name, str):
            raise ConfigurationError(f"search takes part of an organisation's name (a str), not {name!r}")
        if limit is not None and limit < 1:
            raise ConfigurationError(f"limit must be at least 1 (or None for every match), not {limit!r}")
        tokens = _words(name)
        if not tokens:
            raise ConfigurationError(f"{name!r} has no letters or digits to search for")
        tokens = list(dict.fromkeys(tokens))
        entries = self.entries

        def wanted(entry: DirectoryEntry) -> bool:
            if entry.retired and not include_retired:
                return False
            return fhir_version is None or entry.fhir_version in (fhir_version, "")

        # Names that start with the query first (the exact name leads that slice), then the rest in order.
        query = " ".join(tokens)
        start = bisect.bisect_left(self._folded, query)
        stop = bisect.bisect_left(self._folded, query + _AFTER_ALL, start)
        found = list(itertools.islice((i for i in range(start, stop) if wanted(entries[i])), limit))
        if limit is None or len(found) < limit:
            for index in self._matching(tokens):
                if (start <= index < stop) or not wanted(entries[index]):
                    continue
                found.append(index)
                if len(found) == limit:
                    break
        return [entries[i] for i in found]

    def get(self, name: str, **search: Any) -> DirectoryEntry:
        """The one entry ``name`` designates: its exact name (case and accents aside) when several match,
        else the only match. :class:`~epic_fhir_async.ConfigurationError` lists the candidates otherwise."""
        matches = self.search(name, limit=None, **search)
        wanted = " ".join(_words(name))
        exact = [e for e in matches if " ".join(_words(e.name)) == wanted]
        if len({e.base_url for e in exact}) == 1:
            return exact[0]
        choices = exact or matches
        if len({e.base_url for e in choices}) == 1:
            return choices[0]
        if not choices:
            raise ConfigurationError(f"no organisation in the directory matches {name!r}")
        shown = "; ".join(f"{e.name or '(no name)'} <{e.base_url}>" for e in choices[:10])
        more = f" and {len(choices) - 10} more" if len(choices) > 10 else ""
        raise ConfigurationError(
            f"{len(choices)} endpoints match {name!r}: {shown}{more}. Give the full name, or pick an entry "
            "from search() and call entry.client()"
        )

    def client(self, name: str | DirectoryEntry, **kwargs: Any) -> EpicFHIRClient:
        """An :class:`~epic_fhir_async.EpicFHIRClient` for one organisation (an entry, or a name :meth:`get`
        resolves); ``kwargs`` go to the client (``auth=``, ...)."""
        entry = name if isinstance(name, DirectoryEntry) else self.get(name)
        return entry.client(**kwargs)


# -- download and cache --------------------------------------------------------------------------------------


async def _download(
    target: httpx.URL,
    cached: _Meta | None,
    deadline: float,
    max_bytes: int,
    retry: RetryPolicy | None,
    transport: httpx.AsyncBaseTransport | None,
    http_client: httpx.AsyncClient | None,
) -> httpx.Response:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json, application/fhir+json"}
    conditional: dict[str, str] = {}
    if cached is not None and cached.etag:
        conditional["If-None-Match"] = cached.etag
    if cached is not None and cached.last_modified:
        conditional["If-Modified-Since"] = cached.last_modified
    session = HTTPSession(
        target,
        headers=headers,
        http_client=http_client,
        transport=transport,
        timeout=deadline,
        retry=retry,
        max_response_bytes=max_bytes,
    )
    try:
        with anyio.fail_after(deadline):
            # No token travels here, so a redirect to a mirror on another origin is fine.
            return await session.request("GET", target, headers=conditional, allow_foreign_origin=True)
    except TimeoutError:
        # httpx's timeouts are per read; this deadline is for the whole download, retries included.
        late = httpx.ReadTimeout(f"no complete answer within {deadline} s")
        raise transport_error(late, "GET", target, what="endpoint directory download from") from None
    finally:
        await session.aclose()


@dataclass
class _Meta:
    url: str
    etag: str
    last_modified: str
    stored_at: float
    size: int


class _Cache:
    """``<dir>/endpoints-<hash>.json`` (the body as downloaded) and ``.meta.json`` (URL, validators, time);
    both written through a temporary name and renamed, so a crash never leaves half a file."""

    def __init__(self, directory: str | os.PathLike[str], url: str) -> None:
        directory = Path(directory).expanduser()
        stem = "endpoints-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
        self.url = url
        self.body = directory / f"{stem}.json"
        self.meta = directory / f"{stem}.meta.json"

    def read_meta(self) -> _Meta | None:
        try:
            data = _json.loads(self.meta.read_bytes())
            meta = _Meta(
                url=str(data["url"]),
                etag=str(data.get("etag") or ""),
                last_modified=str(data.get("last_modified") or ""),
                stored_at=float(data["stored_at"]),
                size=int(data["size"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no cache yet, or one we cannot read: download again
        if meta.url != self.url or not self.body.is_file() or self.body.stat().st_size != meta.size:
            return None
        return meta

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.name}.{os.getpid()}.part")
        part.write_bytes(data)
        os.replace(part, path)

    def store(self, body: bytes, etag: str | None, last_modified: str | None) -> None:
        self._write(self.body, body)
        meta = {
            "url": self.url,
            "etag": etag or "",
            "last_modified": last_modified or "",
            "stored_at": time.time(),
            "size": len(body),
        }
        self._write(self.meta, _json.dumps(meta))

    def touch(self, meta: _Meta) -> None:
        """A 304: the copy is current again."""
        meta.stored_at = time.time()
        self._write(self.meta, _json.dumps(vars(meta)))

    async def load(self, cls: type[EndpointDirectory], max_bytes: int) -> EndpointDirectory:
        directory = await cls.from_file(self.body, max_bytes=max_bytes)
        directory.source = self.url
        return directory
