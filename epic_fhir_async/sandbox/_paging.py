"""Searchset Bundles and paging sessions, shaped like Epic's (docs/epic-notes.md §3.5, §3.6).

Serving must cost far less than parsing: each match entry is rendered to JSON bytes once and cached, so a
page is a byte join; each session page is cached whole. A session holds the query's result ids on the server;
the next link is ``<base>/<Type>?sessionID=<page>-<32 HEX>`` and expires ``ttl`` seconds after its last use.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from .. import _json
from ._clock import SandboxClock
from ._http import outcome, outcome_entry, outcome_issue

__all__ = ["Pager", "Session", "self_link_query"]

_MAX_SESSIONS = 2000
#: ``_include`` search parameter -> reference fields it follows (basic support; Epic: ``searchInclude ["*"]``).
_INCLUDE_FIELDS: dict[str, tuple[str, ...]] = {
    "patient": ("patient", "subject"),
    "subject": ("subject",),
    "encounter": ("encounter",),
    "performer": ("performer",),
    "medication": ("medicationReference",),
    "requester": ("requester",),
    "recorder": ("recorder",),
    "author": ("author",),
    "general-practitioner": ("generalPractitioner",),
    "organization": ("managingOrganization",),
    "result": ("result",),
}


def _references(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [str(i["reference"]) for i in items if isinstance(i, dict) and isinstance(i.get("reference"), str)]


def self_link_query(params: Sequence[tuple[str, str]]) -> str:
    """Epic's self link re-orders the query (docs/epic-notes.md §3.5): plain parameters sorted, then ``_``."""
    ordered = sorted(params, key=lambda kv: (kv[0].startswith("_"), kv[0]))
    return urlencode(ordered, safe="|:,/")


@dataclass
class Session:
    rtype: str
    ids: list[str]
    page_size: int
    includes: tuple[str, ...]
    expires_at: float
    revincludes: tuple[str, ...] = ()
    pages: dict[int, bytes] = field(default_factory=dict)
    trailing: list[bytes] = field(default_factory=list)  # the outcome entry, sent with the last page


class Pager:
    """Renders searchset pages; ``resources`` is the live type -> id -> resource store."""

    def __init__(
        self,
        *,
        resources: Mapping[str, Mapping[str, dict[str, Any]]],
        base_url: Callable[[], str],
        clock: SandboxClock,
        ttl: float,
        seed: int = 0,
    ) -> None:
        self._resources = resources
        self._base_url = base_url
        self._clock = clock
        self.ttl = ttl
        self._rng = random.Random(seed)  # noqa: S311 - session ids are opaque, the bearer guards them
        self._counter = 0
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._entries: dict[tuple[str, str], bytes] = {}
        self._entries_base = ""
        self._provenance_index: dict[str, list[str]] = {}
        self._provenance_seen = -1  # size of the Provenance pool the index was built from

    # -- caches -----------------------------------------------------------------------------------------
    def invalidate(self, rtype: str, rid: str) -> None:
        """Forget a resource's rendered entry after a write."""
        self._entries.pop((rtype, rid), None)

    def expire_all(self) -> None:
        """Drop every paging session (their next links then get 4113)."""
        self._sessions.clear()

    def _entry(self, rtype: str, rid: str, base: str) -> bytes:
        key = (rtype, rid)
        cached = self._entries.get(key)
        if cached is None:
            url = f"{base}/{rtype}/{rid}"
            cached = _json.dumps(
                {
                    "link": [{"relation": "self", "url": url}],
                    "fullUrl": url,
                    "resource": self._resources[rtype][rid],
                    "search": {"mode": "match"},
                }
            )
            self._entries[key] = cached
        return cached

    def _included(self, rtype: str, ids: Sequence[str], includes: Sequence[str], base: str) -> list[bytes]:
        """``search.mode: include`` entries for the references ``includes`` name (never counted in total)."""
        fields: list[tuple[str, str | None]] = []
        for spec in includes:
            parts = spec.split(":")
            if parts == ["*"] or (len(parts) >= 2 and parts[0] == rtype and parts[1] == "*"):
                fields.extend((f, None) for names in _INCLUDE_FIELDS.values() for f in names)
            elif len(parts) >= 2 and parts[0] == rtype and parts[1] in _INCLUDE_FIELDS:
                target = parts[2] if len(parts) > 2 else None
                fields.extend((f, target) for f in _INCLUDE_FIELDS[parts[1]])
        if not fields:
            return []
        pool = self._resources[rtype]
        seen = {(rtype, rid) for rid in ids}
        out: list[bytes] = []
        for rid in ids:
            for field_name, target in fields:
                for ref in _references(pool[rid].get(field_name)):
                    ref_type, _, ref_id = ref.partition("/")
                    if (target and ref_type != target) or (ref_type, ref_id) in seen:
                        continue
                    resource = self._resources.get(ref_type, {}).get(ref_id)
                    if resource is None:
                        continue
                    seen.add((ref_type, ref_id))
                    url = f"{base}/{ref_type}/{ref_id}"
                    out.append(
                        _json.dumps({"fullUrl": url, "resource": resource, "search": {"mode": "include"}})
                    )
        return out

    def _revincluded(
        self, rtype: str, ids: Sequence[str], revincludes: Sequence[str], base: str
    ) -> list[bytes]:
        """``_revinclude=Provenance:target``: Provenances of the page's matches.

        It is the only ``_revinclude`` Epic lists (docs/epic-notes.md §3.2).
        """
        if not any(spec.split(":")[:2] == ["Provenance", "target"] for spec in revincludes):
            return []
        pool = self._resources.get("Provenance", {})
        if len(pool) != self._provenance_seen:  # built lazily; rebuilt if Provenances were added
            index: dict[str, list[str]] = {}
            for pid, provenance in pool.items():
                for ref in _references(provenance.get("target")):
                    index.setdefault(ref, []).append(pid)
            self._provenance_index, self._provenance_seen = index, len(pool)
        out: list[bytes] = []
        for rid in ids:
            for pid in self._provenance_index.get(f"{rtype}/{rid}", ()):
                url = f"{base}/Provenance/{pid}"
                out.append(
                    _json.dumps({"fullUrl": url, "resource": pool[pid], "search": {"mode": "include"}})
                )
        return out

    def _bundle(self, total: int, links: list[dict[str, str]], entries: list[bytes]) -> bytes:
        head = _json.dumps({"resourceType": "Bundle", "type": "searchset", "total": total, "link": links})
        if not entries:
            return head
        return head[:-1] + b',"entry":[' + b",".join(entries) + b"]}"

    def _trailing(self, issues: list[dict[str, Any]], empty: bool) -> list[bytes]:
        if empty:
            # docs/epic-notes.md §3.6: an empty search is still 200, total 0, with a 4101 warning entry.
            issues = [
                *issues,
                outcome_issue("warning", "processing", "4101", "Resource request returns no results."),
            ]
        return [_json.dumps(outcome_entry(outcome(*issues)))] if issues else []

    # -- pages ------------------------------------------------------------------------------------------
    def first_page(
        self,
        rtype: str,
        ids: list[str],
        issues: list[dict[str, Any]],
        *,
        self_query: str,
        page_size: int,
        summary_count: bool = False,
        includes: Sequence[str] = (),
        revincludes: Sequence[str] = (),
    ) -> bytes:
        """The first page of a search; opens a session when the results do not fit on one page.

        Paging as Epic does it: docs/epic-notes.md §3.5.
        """
        base = self._check_base()
        self_link = {
            "relation": "self",
            "url": f"{base}/{rtype}?{self_query}" if self_query else f"{base}/{rtype}",
        }
        if summary_count:
            return self._bundle(len(ids), [self_link], [])
        trailing = self._trailing(issues, not ids)
        if len(ids) <= page_size:
            entries = [self._entry(rtype, rid, base) for rid in ids]
            entries += self._included(rtype, ids, includes, base)
            entries += self._revincluded(rtype, ids, revincludes, base)
            return self._bundle(len(ids), [self_link], entries + trailing)
        self._counter += 1
        token = f"{self._rng.getrandbits(128):032X}"
        self._sessions[token] = Session(
            rtype,
            list(ids),
            page_size,
            tuple(includes),
            self._clock.now() + self.ttl,
            tuple(revincludes),
            trailing=trailing,
        )
        while len(self._sessions) > _MAX_SESSIONS:
            self._sessions.popitem(last=False)
        entries = [self._entry(rtype, rid, base) for rid in ids[:page_size]]
        entries += self._included(rtype, ids[:page_size], includes, base)
        entries += self._revincluded(rtype, ids[:page_size], revincludes, base)
        # Epic lists next before self on a paged Bundle, and its first page of a paged search carries no
        # outcome entry (docs/epic-notes.md §3.5, §3.6): the warnings come with the last page here.
        links = [{"relation": "next", "url": f"{base}/{rtype}?sessionID=1-{token}"}, self_link]
        # Paged bundles report the entries on this page as total (docs/epic-notes.md §3.5).
        return self._bundle(page_size, links, entries)

    def session_page(self, rtype: str, session_id: str) -> bytes | None:
        """A later page, or None when the session is unknown or expired (the caller answers 4113)."""
        page_text, _, token = session_id.partition("-")
        session = self._sessions.get(token)
        now = self._clock.now()
        if session is None or not page_text.isdigit() or session.rtype != rtype:
            return None
        if session.expires_at <= now:
            del self._sessions[token]
            return None
        session.expires_at = now + self.ttl
        self._sessions.move_to_end(token)
        page = int(page_text)
        cached = session.pages.get(page)
        if cached is not None:
            return cached
        base = self._check_base()
        start = page * session.page_size
        chunk = [
            rid for rid in session.ids[start : start + session.page_size] if rid in self._resources[rtype]
        ]
        links = [{"relation": "self", "url": f"{base}/{rtype}?sessionID={session_id}"}]
        last = start + session.page_size >= len(session.ids)
        if not last:
            links.insert(0, {"relation": "next", "url": f"{base}/{rtype}?sessionID={page + 1}-{token}"})
        entries = [self._entry(rtype, rid, base) for rid in chunk]
        entries += self._included(rtype, chunk, session.includes, base)
        entries += self._revincluded(rtype, chunk, session.revincludes, base)
        if last:
            entries += session.trailing
        body = self._bundle(len(chunk), links, entries)
        session.pages[page] = body
        return body

    def _check_base(self) -> str:
        base = self._base_url()
        if base != self._entries_base:  # served on another port: fullUrls change
            self._entries.clear()
            for session in self._sessions.values():
                session.pages.clear()
            self._entries_base = base
        return base
