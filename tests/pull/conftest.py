"""Fakes for the pull engine's unit tests: a searcher whose pages are deterministic and instrumented."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from epic_fhir_async._outcome import OperationOutcome


@dataclass
class FakePage:
    resources: list[dict[str, Any]]
    outcomes: list[OperationOutcome] = field(default_factory=list)
    next_url: str | None = None


@dataclass
class FakeSearcher:
    """``search(type, **params)``: ``pages`` pages of ``page_size`` resources, ids derived from the params."""

    pages: int = 2
    page_size: int = 3
    delay: float = 0.0
    fail: set[tuple[str, str]] = field(default_factory=set)  # (patient id, resource type) that raise
    fail_after_pages: int = 0
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    running: int = 0  # page generators alive (producer tasks inside a search)
    fetched: int = 0
    # Pages wait until ``hold_until`` are in flight together, so tests that check a concurrency limit is
    # reached do not depend on scheduling luck (the timeout only keeps a broken engine from hanging).
    hold_until: int = 0
    gate: anyio.Event = field(default_factory=anyio.Event)

    def search(self, resource_type: str, /, **params: Any) -> FakeQuery:
        self.calls.append((resource_type, params))
        return FakeQuery(self, resource_type, params)


@dataclass
class FakeQuery:
    owner: FakeSearcher
    resource_type: str
    params: dict[str, Any]

    async def pages(self) -> AsyncIterator[FakePage]:
        o = self.owner
        pid = str(self.params.get("patient") or self.params.get("_id"))
        tag = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()) if k not in {"patient", "_id"})
        o.running += 1
        try:
            for n in range(o.pages):
                o.in_flight += 1
                o.max_in_flight = max(o.max_in_flight, o.in_flight)
                try:
                    if o.in_flight >= o.hold_until:
                        o.gate.set()
                    with anyio.move_on_after(2):
                        await o.gate.wait()
                    await anyio.sleep(o.delay)
                    if (pid, self.resource_type) in o.fail and n >= o.fail_after_pages:
                        raise RuntimeError(f"boom on page {n}")
                finally:
                    o.in_flight -= 1
                resources = [
                    {"resourceType": self.resource_type, "id": f"{pid}-{tag}-{n}-{i}"}
                    for i in range(o.page_size)
                ]
                o.fetched += len(resources)
                outcomes = [OperationOutcome(issues=(), raw={"resourceType": "OperationOutcome"})]
                yield FakePage(resources, outcomes if n == 0 else [])
        finally:
            o.running -= 1


@pytest.fixture
def searcher() -> FakeSearcher:
    return FakeSearcher()
