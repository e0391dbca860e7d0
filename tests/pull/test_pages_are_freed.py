"""A page the consumer has finished is freed before the next one arrives: the pull keeps no reference to it
while it waits (a page held until the next parse is freed cold in the cache, and doubles what is alive)."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from epic_fhir_async.pull._stream import pull

from .conftest import FakePage


class Resource(dict[str, Any]):
    """A resource dict that can be watched with a weak reference."""

    __slots__ = ("__weakref__",)


@dataclass
class HeldSecondPage:
    """One stream of two pages; the second waits until the test releases it."""

    released: anyio.Event = field(default_factory=anyio.Event)
    second_requested: anyio.Event = field(default_factory=anyio.Event)

    def search(self, resource_type: str, /, **params: Any) -> HeldSecondPage:
        return self

    async def pages(self) -> AsyncIterator[FakePage]:
        yield FakePage([Resource(resourceType="Observation", id=f"first-{i}") for i in range(3)])
        self.second_requested.set()
        await self.released.wait()
        yield FakePage([Resource(resourceType="Observation", id="second-0")])


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["async with", "bare async for"])
async def test_a_finished_page_is_freed_while_the_next_one_is_fetched(mode: str) -> None:
    searcher = HeldSecondPage()
    watched: list[weakref.ref[Resource]] = []
    alive_while_waiting: list[int] = []

    async def check_then_release() -> None:
        await searcher.second_requested.wait()
        await anyio.wait_all_tasks_blocked()  # the consumer waits for the second page now
        alive_while_waiting.append(sum(ref() is not None for ref in watched))
        searcher.released.set()

    ids: list[str] = []

    async def consume(items: AsyncIterator[Any]) -> None:
        async for item in items:
            ids.append(item.resource["id"])
            if item.resource["id"].startswith("first"):
                watched.append(weakref.ref(item.resource))
            del item

    async with anyio.create_task_group() as tg:
        tg.start_soon(check_then_release)
        if mode == "async with":
            async with pull(searcher, ["p1"], ["Observation"], concurrency=1, expand=False) as stream:
                await consume(stream)
        else:
            await consume(pull(searcher, ["p1"], ["Observation"], concurrency=1, expand=False))

    assert ids == ["first-0", "first-1", "first-2", "second-0"]  # nothing lost
    assert len(watched) == 3
    assert alive_while_waiting == [0]
