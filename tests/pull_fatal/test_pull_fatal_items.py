"""The pull engine: a setup failure hands out the pages already fetched before it raises; repeated patient
ids are pulled once; reprs of items, failures, outcomes and the stream hold no patient id and no resource."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from epic_fhir_async import (
    PullCheckpoint,
    PullError,
    PullFailure,
    PullItem,
    StreamOutcomes,
    TokenRequestError,
)
from epic_fhir_async._outcome import OperationOutcome
from epic_fhir_async._pull import PullStream, pull

from .conftest import FakePage, FakeSearcher

pytestmark = pytest.mark.anyio

QUERIES = ["Condition", "Patient"]


async def items_of(stream: PullStream) -> list[PullItem]:
    async with stream as running:
        return [item async for item in running]


class FailsAfterOthers:
    """Patients ``good`` each get one page per query; ``bad``'s searches fail with a token error once every
    other task is blocked: the consumer waits, and the good streams wait to hand pages to a full buffer."""

    def __init__(self, bad: str) -> None:
        self.bad = bad
        self.failed = anyio.Event()

    def search(self, resource_type: str, /, **params: Any) -> FailsAfterOthers._Query:
        return self._Query(self, resource_type, str(params.get("patient") or params.get("_id")))

    class _Query:
        def __init__(self, owner: FailsAfterOthers, resource_type: str, pid: str) -> None:
            self.owner, self.resource_type, self.pid = owner, resource_type, pid

        async def pages(self) -> AsyncIterator[FakePage]:
            if self.pid == self.owner.bad:
                await anyio.wait_all_tasks_blocked()
                self.owner.failed.set()
                raise TokenRequestError(
                    "token request failed: HTTP 400 invalid_client", error="invalid_client"
                )
            yield FakePage([{"resourceType": self.resource_type, "id": f"{self.pid}-{self.resource_type}"}])


@pytest.mark.parametrize("on_error", ["collect", "raise"])
async def test_a_setup_failure_delivers_what_was_fetched_then_raises(on_error: Any) -> None:
    good = ["p1", "p2", "p3"]
    searcher = FailsAfterOthers("p4")
    checkpoint = PullCheckpoint()
    stream = pull(
        searcher, [*good, "p4"], QUERIES, concurrency=8, buffer=1, on_error=on_error, checkpoint=checkpoint
    )
    items: list[PullItem] = []

    async def consume_after_the_failure() -> None:
        async with stream as running:
            await searcher.failed.wait()  # consume nothing until the pull has already failed
            async for item in running:
                items.append(item)  # one by one: a comprehension would lose them when it raises

    with pytest.raises(PullError) as info:
        await consume_after_the_failure()
    assert info.value.patient_id is None
    assert isinstance(info.value.__cause__, TokenRequestError)
    # Nothing fetched is lost: the pages in the buffer and those waiting to enter it all came out, and each
    # good stream is checkpointed complete.
    assert sorted((i.patient_id, i.query) for i in items) == sorted((p, q) for p in good for q in QUERIES)
    assert all(checkpoint.is_complete(p, q) for p in good for q in QUERIES)
    assert not checkpoint.is_complete("p4", "Condition")
    assert stream.failures == []


async def test_repeated_patient_ids_are_pulled_once_in_first_seen_order() -> None:
    searcher = FakeSearcher()
    ids = ["b", "a", "b", "c", "a", "b"]
    items = await items_of(pull(searcher, ids, QUERIES, concurrency=1))
    assert [p["patient"] if "patient" in p else p["_id"] for _, p in searcher.calls] == [
        "b",
        "b",
        "a",
        "a",
        "c",
        "c",
    ]
    assert len(items) == 3 * len(QUERIES) * 2  # two resources per stream, no stream twice
    assert len({(i.patient_id, i.query, i.resource["id"]) for i in items}) == len(items)


async def test_repeated_ids_from_an_async_iterable_are_pulled_once() -> None:
    async def ids() -> AsyncIterator[str]:
        for pid in ["x", "y", "x", "x", "z", "y"]:
            yield pid

    searcher = FakeSearcher()
    stream = pull(searcher, ids(), QUERIES, concurrency=2)
    items = await items_of(stream)
    assert sorted({i.patient_id for i in items}) == ["x", "y", "z"]
    assert len(searcher.calls) == 3 * len(QUERIES)
    assert stream.progress.patients_seen == 3
    assert stream.progress.streams_total == stream.progress.streams_done == 3 * len(QUERIES)


async def test_reprs_hold_no_patient_id_and_no_resource() -> None:
    pid = "eq081-VQEgP8drUUqCWzHfw3"
    stream = pull(FakeSearcher(), [pid], QUERIES)
    assert pid not in repr(stream)
    async with stream as running:
        items = [item async for item in running]
        during = repr(running)
    item = items[0]
    outcome = OperationOutcome(issues=(), raw={"resourceType": "OperationOutcome", "note": "SECRET-NOTE"})
    shown = [
        repr(item),
        str(item),
        repr(items),
        during,
        repr(stream),
        repr(PullFailure(pid, "Condition", RuntimeError(f"failed for {pid}: SECRET-NOTE"))),
        repr(StreamOutcomes(pid, "Condition", (outcome,))),
    ]
    for text in shown:
        assert pid not in text
        assert "SECRET-NOTE" not in text
        assert f"{pid}-0" not in text  # a resource id
    assert repr(item) == (
        "PullItem(patient_id=<patient id masked>, query='Condition', resource_type='Condition')"
    )
    assert "resources=4" in repr(stream)
    assert "Condition, Patient" in repr(stream)
    assert "error=RuntimeError" in shown[5]
    assert "outcomes=1" in shown[6]
