"""A search's pages (speed itself is measured in ``benchmarks/``):

* ``async for`` over a search drops a finished page before it fetches the next (flat memory, and parsing a
  page while the previous one is alive costs CPU), yet still yields every match once;
* ``parse_page`` decides ``search.mode == "match"`` without looking inside the resource.
"""

from __future__ import annotations

import weakref
from typing import Any

import pytest

from epic_fhir_async._bundle import Page, parse_page
from epic_fhir_async._search import _Resources

pytestmark = pytest.mark.anyio


class _Resource(dict[str, Any]):
    """A dict that can be weakly referenced, to see when the SDK lets go of a page."""


class _Pages:
    """Three pages of three resources; records how many of the previous page were alive at each fetch."""

    def __init__(self) -> None:
        self.fetched = 0
        self.refs: list[weakref.ref[_Resource]] = []
        self.alive_at_fetch: list[int] = []

    def __aiter__(self) -> _Pages:
        return self

    async def __anext__(self) -> Page:
        self.alive_at_fetch.append(sum(ref() is not None for ref in self.refs))
        if self.fetched == 3:
            raise StopAsyncIteration
        self.fetched += 1
        resources: list[dict[str, Any]] = [_Resource(id=f"{self.fetched}-{i}") for i in range(3)]
        self.refs = [weakref.ref(r) for r in resources if isinstance(r, _Resource)]
        return Page(resources, [], [], None, None, {})

    async def aclose(self) -> None:
        pass


async def test_a_finished_page_is_dropped_before_the_next_fetch() -> None:
    pages = _Pages()
    seen = [r["id"] async for r in _Resources(pages)]
    assert seen == [f"{p}-{i}" for p in (1, 2, 3) for i in range(3)]
    # Only the resource the caller itself still holds (the comprehension's variable) may be alive when the
    # next page is fetched; an iterator holding on to the finished page would keep all 3.
    assert pages.alive_at_fetch == [0, 1, 1, 1]


def test_match_mode_decides_without_the_resource_type() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "processing"}]}
    page = parse_page(
        {
            "resourceType": "Bundle",
            "entry": [
                {"resource": outcome, "search": {"mode": "match"}},  # explicitly data: kept as data
                {"resource": outcome},  # no mode: Epic's warning entry
                {"resource": outcome, "search": {"mode": "outcome"}},
                {"resource": {"resourceType": "Patient", "id": "p"}},
                {"resource": {"resourceType": "Patient", "id": "q"}, "search": {"mode": "other"}},
            ],
        }
    )
    assert page.resources == [outcome, {"resourceType": "Patient", "id": "p"}]
    assert len(page.outcomes) == 2
