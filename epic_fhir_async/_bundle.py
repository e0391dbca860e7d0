"""Bundle helpers and :class:`Page`: one searchset page split into data, outcomes and includes.

Resources stay the plain dicts orjson returned: no per-resource wrapper objects, since JSON parsing is
already the main cost of a page. Epic puts OperationOutcome warnings inside searchsets as
``search.mode == "outcome"`` entries (docs/epic-notes.md §3.6); they go to ``Page.outcomes`` and are never
yielded as data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._errors import EpicFHIRError
from ._outcome import OperationOutcome

__all__ = ["Page", "UnparsedPage", "next_link", "parse_page"]


@dataclass(frozen=True)
class Page:
    """One page of a search.

    ``resources`` are the match entries (``search.mode`` ``"match"`` or absent); ``included`` the
    ``"include"`` entries; ``outcomes`` the parsed OperationOutcomes; ``total`` is ``Bundle.total`` (on Epic
    it equals the page size when paged: use ``SearchQuery.count()``); ``raw`` the whole Bundle.

    ``repr()`` shows counts only: resources are patient data and the next link carries a session id.
    Pages from a search are parsed when a field is first read (:class:`UnparsedPage`); a copy or a pickle is
    an ordinary ``Page``.
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


#: Page's fields in constructor order, and as a set for the lookup in UnparsedPage.__getattr__.
_FIELD_ORDER = tuple(f.name for f in fields(Page))
_FIELDS = frozenset(_FIELD_ORDER)


class UnparsedPage(Page):
    """A :class:`Page` whose body is parsed when one of its fields is first read.

    ``async for page in query.pages()`` keeps the previous page in the loop variable until ``__anext__``
    returns; a page parsed inside ``__anext__`` is built while the previous one is still alive, which measured
    10-35% more CPU (docs/performance.md). Parsed on first read instead, it is built after the loop variable
    has moved on and the previous page is freed. A body that is not a Bundle raises :class:`EpicFHIRError`
    from that first read (the pager reads every page before it fetches the next, so an untouched page still
    fails the iteration), and again on every later read.
    """

    def __init__(self, parse: Callable[[], Page] | None = None, /, **fields: Any) -> None:
        if parse is None:  # dataclasses.replace(page, ...) passes every field: an already parsed page
            Page.__init__(self, **fields)
        else:
            object.__setattr__(self, "_parse", parse)

    def __getattr__(self, name: str) -> Any:
        # Called only for what the instance does not hold yet: before the parse, every field.
        state = self.__dict__
        parse = state.get("_parse")
        if parse is None or name not in _FIELDS:
            raise AttributeError(name)
        page = parse()  # raises for a body that is not a Bundle; nothing is kept then
        state.update(page.__dict__)
        state.pop("_parse", None)  # lets go of the response body (another thread may have parsed it too)
        return state[name]

    def __repr__(self) -> str:
        if "_parse" in self.__dict__:  # a repr (a log line, a debugger) must not parse, nor fail
            return "Page(not read yet)"
        return super().__repr__()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Page):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _FIELD_ORDER)

    __hash__ = Page.__hash__

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy or a pickle is an ordinary Page (the parse function is not picklable).
        return (Page, tuple(getattr(self, name) for name in _FIELD_ORDER))


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
