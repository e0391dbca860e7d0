"""SearchQuery: an immutable search that streams resources across Epic's paged Bundles.

Paging follows only ``link[relation=next]`` verbatim (Epic's is an opaque ``sessionID``, docs/epic-notes.md
§3.5), refuses next links on another origin (the token must not go there) and a next link that repeats. An
expired paging session (Epic code 4113) restarts the query and skips what was already yielded; a second
expiry before the restart delivered anything new raises :class:`SessionExpired`. A search fetches at most
``max_pages`` pages (the client's, or :meth:`SearchQuery.with_max_pages`), then raises :class:`PagingError`:
a server whose next link changes every time would otherwise page forever.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ._bundle import Page, UnparsedPage, parse_page
from ._epic_search import check_search
from ._errors import ConfigurationError, FHIRStatusError, PagingError, SessionExpired
from ._urls import check_type, redact_url

if TYPE_CHECKING:
    import httpx

    from ._http import HTTPSession
    from .models import ModelStream

__all__ = ["PageIterator", "SearchQuery"]

_EXPIRED_CODE = "4113"
#: ``max_pages`` not set on the query: the client's ``max_pages`` applies.
_CLIENT_DEFAULT = -1
_NO_ITEMS: list[dict[str, Any]] = []


def _is_expired(exc: FHIRStatusError) -> bool:
    # Epic: fatal 4113 "Session ID for cached search results has expired." (docs/epic-notes.md §3.5); its
    # HTTP status is undocumented, so 400 and 404 both count.
    outcome = exc.operation_outcome
    return exc.status_code in (400, 404) and outcome is not None and outcome.has_epic_code(_EXPIRED_CODE)


def _joined_ids(resources: list[dict[str, Any]]) -> str:
    try:  # the usual case (every id a string) in one C-level pass
        return "\x00".join([r["id"] for r in resources])
    except (KeyError, TypeError):
        return "\x00".join([str(r.get("id")) for r in resources])


class SearchQuery:
    """A FHIR search; every builder method returns a new query.

    ``async for resource in query`` yields every match across pages (outcome entries never);
    ``query.pages()`` yields :class:`Page` objects; ``await query.first()``; ``await query.count()``.
    Before the first request the search is checked against Epic's requirements (:attr:`epic_rules`,
    :meth:`with_epic_rules`): one Epic refuses raises :class:`ConfigurationError` and nothing is sent.
    """

    __slots__ = ("_epic_rules", "_max_pages", "_method", "_params", "_prefetch", "_session", "resource_type")

    def __init__(
        self,
        session: HTTPSession,
        resource_type: str,
        params: dict[str, Any],
        *,
        method: str = "GET",
        prefetch: bool = False,
        max_pages: int | None = _CLIENT_DEFAULT,
        epic_rules: bool = True,
    ) -> None:
        self._session = session
        self.resource_type = check_type(resource_type)  # it becomes the URL path: no "../", no "?"
        self._params = {k: v for k, v in params.items() if v is not None}
        self._method = method
        self._prefetch = prefetch
        self._max_pages = max_pages
        self._epic_rules = epic_rules

    def __repr__(self) -> str:
        # Parameter names only: values carry patient identifiers.
        return (
            f"SearchQuery({self.resource_type!r}, params={sorted(self._params)!r}, method={self._method!r})"
        )

    @property
    def params(self) -> dict[str, Any]:
        """A copy of the search parameters."""
        return dict(self._params)

    def _copy(self, **changes: Any) -> SearchQuery:
        values: dict[str, Any] = {
            "params": self._params,
            "method": self._method,
            "prefetch": self._prefetch,
            "max_pages": self._max_pages,
            "epic_rules": self._epic_rules,
        }
        values.update(changes)
        return SearchQuery(
            self._session,
            self.resource_type,
            values["params"],
            method=values["method"],
            prefetch=values["prefetch"],
            max_pages=values["max_pages"],
            epic_rules=values["epic_rules"],
        )

    @property
    def max_pages(self) -> int | None:
        """Pages this search may fetch before it raises :class:`PagingError` (``None``: no cap)."""
        if self._max_pages == _CLIENT_DEFAULT:
            return self._session.max_pages
        return self._max_pages

    def with_max_pages(self, max_pages: int | None) -> SearchQuery:
        """A new query that fetches at most ``max_pages`` pages (``None``: no cap) instead of the client's
        ``max_pages``; one more page raises :class:`PagingError`."""
        if max_pages is not None and (
            isinstance(max_pages, bool) or not isinstance(max_pages, int) or max_pages < 1
        ):
            raise ConfigurationError(f"with_max_pages({max_pages!r}): an int >= 1, or None for no cap")
        return self._copy(max_pages=max_pages)

    @property
    def epic_rules(self) -> bool:
        """Whether Epic's search requirements are checked before the search is sent (docs/epic-notes.md §3.3)."""
        return self._epic_rules

    def with_epic_rules(self, enabled: bool = True) -> SearchQuery:
        """A new query that checks (or, with ``False``, does not check) Epic's search requirements before it is
        sent: a search Epic refuses raises :class:`ConfigurationError` without a request. Turn it off for a
        server that is not Epic, or to send a search Epic would refuse on purpose."""
        return self._copy(epic_rules=bool(enabled))

    def where(self, **params: Any) -> SearchQuery:
        """A new query with ``params`` added (a ``None`` value removes a parameter)."""
        merged = dict(self._params)
        for key, value in params.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return self._copy(params=merged)

    def using_post(self) -> SearchQuery:
        """Search with ``POST [type]/_search`` and a form body (parameters stay out of URLs and logs)."""
        return self._copy(method="POST")

    def with_prefetch(self, enabled: bool = True) -> SearchQuery:
        """Fetch the next page while the caller works on the current one (at most one page ahead).

        The prefetch runs in a task group scoped to the iteration: iterate inside
        ``async with contextlib.aclosing(query.pages()) as pages:`` so that breaking out cancels it.
        """
        return self._copy(prefetch=enabled)

    async def _first_page(self, params: dict[str, Any]) -> Page:
        if self._epic_rules:
            # Before any request: a search Epic refuses would cost a 400/403 (and, in a pull, one failed stream
            # per patient); docs/epic-notes.md §3.3.
            check_search(self.resource_type, params)
        session = self._session
        if self._method == "POST":
            response = await session.request(
                "POST", f"{self.resource_type}/_search", data=params, retry_safe=True
            )
        else:
            response = await session.request("GET", self.resource_type, params=params or None)
        return self._page_of(response)

    async def _next_page(self, next_url: str) -> Page:
        # The next link verbatim (Epic's sessionID); another origin raises UnsafeURLError in session.url().
        return self._page_of(await self._session.request("GET", next_url))

    def _page_of(self, response: httpx.Response) -> Page:
        """The page of ``response``, parsed when first read (:class:`UnparsedPage`): a caller's loop variable
        then no longer holds the previous page while this one is built. The Content-Type is checked now."""
        session = self._session
        session.check_json(response)
        return UnparsedPage(lambda: parse_page(session.parse_json(response)))

    async def _prefetched(self) -> AsyncGenerator[Page, None]:
        # Zero-size buffer: the producer holds at most the one page it fetched ahead (bounded memory).
        send, receive = anyio.create_memory_object_stream[Page](0)
        error: list[BaseException] = []

        async def produce() -> None:
            async with send:
                try:
                    async for page in _Pager(self):
                        await send.send(page)
                        del page  # not held while the next page is fetched and parsed
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:  # handed to the consumer, raised where it iterates
                    error.append(exc)

        closed = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            async with receive:
                async for page in receive:
                    try:
                        yield page
                    except GeneratorExit:
                        # The caller closed the iterator: cancel the fetch in flight, leave quietly.
                        closed = True
                        break
                    del page  # the caller's to keep: not held here while the next one is received
            tg.cancel_scope.cancel()
        if error and not closed:
            raise error[0]

    def pages(self) -> PageIterator:
        """Every page in order (see :meth:`with_prefetch` for fetching one page ahead).

        Each page is parsed when one of its fields is first read, so in ``async for page in
        query.pages()`` it is built after the loop variable has let go of the previous page (building it
        while both were alive cost 10-35% more CPU: docs/performance.md). A body that is not a Bundle raises
        :class:`EpicFHIRError` at that read, and from the iteration if the page is never read.
        """
        return self._prefetched() if self._prefetch else _Pager(self)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return _Resources(self.pages())

    def models(self) -> ModelStream:
        """Every match as a typed fhir.resources model, each converted when the iteration reaches it (the
        ``models`` extra; see :mod:`epic_fhir_async.models`)."""
        from .models import ModelStream  # the models extra, loaded only when asked for

        return ModelStream(self)

    async def first(self) -> dict[str, Any] | None:
        """The first matching resource, or ``None``; asks for one entry unless ``_count`` was set."""
        params = self._params if "_count" in self._params else {**self._params, "_count": 1}
        page = await self._first_page(params)
        return page.resources[0] if page.resources else None

    async def count(self) -> int:
        """The number of matches, from ``_summary=count``: Epic's paged ``Bundle.total`` is only the page size."""
        page = await self._first_page({**self._params, "_summary": "count"})
        if page.total is None:
            raise PagingError(
                f"the server sent no Bundle.total for a {self.resource_type} _summary=count search"
            )
        return page.total


class PageIterator(Protocol):
    """What :meth:`SearchQuery.pages` returns: an async iterator of pages with ``aclose()``."""

    def __aiter__(self) -> AsyncIterator[Page]: ...

    def __anext__(self) -> Awaitable[Page]: ...

    async def aclose(self) -> None: ...


class _Pager:
    """The sequential page walk, as a plain iterator class (no async generator: nothing to finalise when the
    caller breaks out, on asyncio or trio)."""

    __slots__ = (
        "_fetched",
        "_last",
        "_next_url",
        "_query",
        "_restarted",
        "_seen",
        "_seen_ids",
        "_skipping",
        "_started",
        "_visited",
    )

    def __init__(self, query: SearchQuery) -> None:
        self._query = query
        # Ids the caller got, one NUL-joined string per page: match entries are all of the searched type
        # (includes go to Page.included), so the id is the key. Strings are not GC-tracked; a set of 100k ids
        # cost ~25% more CPU on a 100k pull (full collections traverse it), so the set is built only on restart.
        self._seen: list[str] = []
        self._seen_ids: set[str] | None = None
        self._visited: set[str] = set()
        self._next_url: str | None = None
        self._fetched = 0  # pages requested, restarts included
        #: The page handed out last, settled (_settle) when the next one is asked for.
        self._last: Page | None = None
        self._started = False
        self._restarted = False
        self._skipping = False

    def __aiter__(self) -> _Pager:
        return self

    def _count_page(self) -> None:
        query = self._query
        cap = query.max_pages
        if cap is not None and self._fetched >= cap:
            raise PagingError(
                f"the {query.resource_type} search stopped after {cap} pages and the server still sends a next "
                "link: if the search really has more, raise the cap (EpicFHIRClient(max_pages=...) or "
                "query.with_max_pages(...)); a next link that never ends is a server fault"
            )
        self._fetched += 1

    async def _fetch(self) -> Page:
        query = self._query
        if not self._started:
            self._started = True
            self._count_page()
            return await query._first_page(query._params)
        next_url = self._next_url
        if next_url is None:
            raise StopAsyncIteration
        self._count_page()
        if next_url in self._visited:
            raise PagingError(f"the next link repeats ({redact_url(next_url)}): stopping a paging loop")
        self._visited.add(next_url)
        try:
            return await query._next_page(next_url)
        except FHIRStatusError as exc:
            if not _is_expired(exc):
                raise
            if self._restarted:
                raise SessionExpired(
                    f"Epic's paging session for {query.resource_type} expired twice (code 4113); "
                    "the restarted search had not delivered anything new yet"
                ) from exc
            # Restart from the first page and skip what the caller already has: a pull of many pages outlives
            # Epic's paging sessions, and nothing may be lost or yielded twice.
            self._restarted = True
            self._skipping = True
            self._visited.clear()
            self._count_page()
            return await query._first_page(query._params)

    def _settle(self, page: Page) -> None:
        """Take what the walk needs from the page handed out last (reading it parses it, if the caller never
        did): its next link, and the ids the caller got, so a restart after 4113 yields nothing twice."""
        resources = page.resources
        if self._seen_ids is None:
            self._seen.append(_joined_ids(resources))
        else:
            self._seen_ids.update([str(r.get("id")) for r in resources])
        self._next_url = page.next_url

    async def __anext__(self) -> Page:
        last = self._last
        if last is not None:
            # Settled and let go before the next request: the caller's loop variable is then the only
            # reference, and the next page (parsed when first read) is built after it has moved on.
            self._last = None
            self._settle(last)
            del last
        page = await self._fetch()
        if self._skipping:
            seen = self._seen_ids
            if seen is None:
                seen = self._seen_ids = {i for chunk in self._seen for i in chunk.split("\x00")}
            kept = [r for r in page.resources if str(r.get("id")) not in seen]
            if len(kept) != len(page.resources):
                page = Page(kept, page.outcomes, page.included, page.next_url, page.total, page.raw)
            if (
                kept
            ):  # progress since the restart: a later expiry may restart again (a long pull sees several)
                self._restarted = False
        self._last = page
        return page

    async def aclose(self) -> None:
        self._last = None
        self._next_url = None
        self._started = True


class _Resources:
    """``async for resource in query``: hands out a page's dicts by index, awaiting only between pages.

    A plain iterator class rather than an async generator: one resource costs a list lookup, not a generator
    resumption. ``aclose()`` closes the page iterator (and cancels a prefetch).
    """

    __slots__ = ("_index", "_items", "_pages")

    def __init__(self, pages: PageIterator) -> None:
        self._pages = pages
        self._items: list[dict[str, Any]] = []
        self._index = 0

    def __aiter__(self) -> _Resources:
        return self

    async def __anext__(self) -> dict[str, Any]:
        index = self._index
        items = self._items
        if index < len(items):
            self._index = index + 1
            return items[index]
        # Drop the finished page (local included) before fetching the next: parsing a page while the previous
        # one (~10 MB of objects for 1000 entries) is still alive measured 5-30% more CPU, more under load
        # (cache and allocator reuse); the caller keeps whatever it kept.
        del items
        self._items = _NO_ITEMS
        while True:
            page = await self._pages.__anext__()  # StopAsyncIteration ends the loop
            if page.resources:
                self._items = page.resources
                self._index = 1
                return page.resources[0]

    async def aclose(self) -> None:
        await self._pages.aclose()
