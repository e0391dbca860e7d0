"""Bundle helpers and :class:`Page`: one searchset page split into data, outcomes and includes.

Resources stay the plain dicts orjson returned: no per-resource wrapper objects, since JSON parsing is
already the main cost of a page. Epic puts OperationOutcome warnings inside searchsets as
``search.mode == "outcome"`` entries (docs/epic-notes.md §3.6); they go to ``Page.outcomes`` and are never
yielded as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import EpicFHIRError
from ._outcome import OperationOutcome

__all__ = ["Page", "next_link", "parse_page"]


@dataclass(frozen=True)
class Page:
    """One page of a search.

    ``resources`` are the match entries (``search.mode`` ``"match"`` or absent); ``included`` the
    ``"include"`` entries; ``outcomes`` the parsed OperationOutcomes; ``total`` is ``Bundle.total`` (on Epic
    it equals the page size when paged: use ``SearchQuery.count()``); ``raw`` the whole Bundle.

    ``repr()`` shows counts only: resources are patient data and the next link carries a session id.
    """

    resources: list[dict[str, Any]]
    outcomes: list[OperationOutcome]
    included: list[dict[str, Any]]
    next_url: str | None
    total: int | None
    raw: dict[str, Any] = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"Page(resources={len(self.resources)}, included={len(self.included)}, "
            f"outcomes={len(self.outcomes)}, total={self.total}, has_next={self.next_url is not None})"
        )


def next_link(bundle: Mapping[str, Any]) -> str | None:
    """The ``link`` with ``relation == "next"`` (verbatim), or ``None``. Tolerates a missing or odd ``link``."""
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and url:
                return url
    return None


def parse_page(bundle: Any) -> Page:
    """Split a searchset Bundle into a :class:`Page`.

    Raises :class:`EpicFHIRError` when the body is not a Bundle. Entries without a ``resource`` (or with a
    non-object one) are skipped: they carry no data, and failing a 100k-resource pull on one would be worse.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        kind = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        raise EpicFHIRError(f"expected a FHIR Bundle from a search, got {kind!r}")
    resources: list[dict[str, Any]] = []
    outcomes: list[OperationOutcome] = []
    included: list[dict[str, Any]] = []
    entries = bundle.get("entry")
    if isinstance(entries, list):
        append = resources.append
        for entry in entries:
            # Epic marks every entry (docs/epic-notes.md §3.6): a match is decided by plain subscripts,
            # without reading the resource (0.6 instead of 0.8 ms per 1000-entry page, mostly cache misses on
            # the entries).
            try:
                if entry["search"]["mode"] == "match":
                    resource = entry["resource"]
                    if isinstance(resource, dict):
                        append(resource)
                    continue
            except (KeyError, TypeError):  # not a dict, no search.mode, no resource
                pass
            _sort_entry(entry, resources, outcomes, included)
    total = bundle.get("total")
    return Page(
        resources=resources,
        outcomes=outcomes,
        included=included,
        next_url=next_link(bundle),
        total=total if isinstance(total, int) and not isinstance(total, bool) else None,
        raw=bundle,
    )


def _sort_entry(
    entry: Any,
    resources: list[dict[str, Any]],
    outcomes: list[OperationOutcome],
    included: list[dict[str, Any]],
) -> None:
    """The general case of :func:`parse_page`: any entry shape, any ``search.mode``."""
    if not isinstance(entry, dict):
        return
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        return
    search = entry.get("search")
    mode = search.get("mode") if isinstance(search, dict) else None
    if mode == "match" or (mode is None and resource.get("resourceType") != "OperationOutcome"):
        resources.append(resource)
    elif mode == "include":
        included.append(resource)
    elif mode == "outcome" or mode is None:  # None here: an OperationOutcome without a mode (Epic's warnings)
        outcome = OperationOutcome.from_json(resource)
        if outcome is not None:
            outcomes.append(outcome)
