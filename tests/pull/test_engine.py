"""The pull engine against fake searchers: fan-out, limits, cancellation, errors, resume; repeated patient ids
pulled once; reprs of items, failures, outcomes and the stream that hold no patient id and no resource."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from epic_fhir_async import ConfigurationError, PullError
from epic_fhir_async._outcome import OperationOutcome, OutcomeIssue
from epic_fhir_async.pull import PullFailure, StreamOutcomes
from epic_fhir_async.pull import _stream as stream_module
from epic_fhir_async.pull._checkpoint import PullCheckpoint
from epic_fhir_async.pull._stream import PullStream, pull
from epic_fhir_async.pull._values import PullItem, PullProgress

from .conftest import FakePage, FakeQuery, FakeSearcher, OnePageSearcher

pytestmark = pytest.mark.anyio

PATIENTS = [f"p{i}" for i in range(12)]
TYPES = ["Condition", "Observation?category=laboratory", "Patient"]


async def drain(stream: PullStream, on_item: Callable[[PullItem], object] | None = None) -> list[PullItem]:
    """Consume a whole pull (calling ``on_item`` on each item) and return the items."""
    out = []
    async with stream as running:
        async for item in running:
            if on_item is not None:
                on_item(item)
            out.append(item)
    return out


async def sequential(
    searcher: FakeSearcher, patients: list[str], types: list[str]
) -> list[tuple[str, str, str]]:
    """The reference: every stream searched one after another."""
    from epic_fhir_async.pull._queries import expand_queries

    out: list[tuple[str, str, str]] = []
    for pid in patients:
        for q in expand_queries(types):
            async for page in searcher.search(q.resource_type, **q.params_for(pid)).pages():
                out.extend((pid, q.label, r["id"]) for r in page.resources)
    return out


async def test_fanout_yields_exactly_the_sequential_set(searcher: FakeSearcher) -> None:
    expected = await sequential(FakeSearcher(), PATIENTS, TYPES)
    got = []
    async with pull(searcher, PATIENTS, TYPES, concurrency=4) as stream:
        async for item in stream:
            got.append((item.patient_id, item.query, item.resource["id"]))
    assert len(got) == len(set(got)) == len(expected) > 0
    assert set(got) == set(expected)
    assert searcher.running == 0
    progress = stream.progress
    assert progress.streams_done == progress.streams_total == len(PATIENTS) * 3
    assert progress.patients_done == len(PATIENTS)


async def test_concurrency_limit_is_never_exceeded() -> None:
    searcher = FakeSearcher(pages=3, delay=0.001, hold_until=5)
    async with pull(searcher, PATIENTS, TYPES, concurrency=5) as stream:
        async for _ in stream:
            pass
    assert searcher.max_in_flight == 5  # reached, never passed


async def test_shared_limiter_bounds_two_pulls_together() -> None:
    searcher = FakeSearcher(pages=2, delay=0.001, hold_until=3)
    limiter = anyio.CapacityLimiter(3)

    async def run() -> None:
        async with pull(searcher, PATIENTS, TYPES, concurrency=limiter) as stream:
            async for _ in stream:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        tg.start_soon(run)
    assert searcher.max_in_flight == 3
    assert limiter.borrowed_tokens == 0


async def test_break_cancels_everything_and_leaves_no_task() -> None:
    searcher = FakeSearcher(pages=50, delay=0.001)
    before = len(anyio.get_running_tasks())
    n = 0
    async with pull(searcher, (f"p{i}" for i in range(10_000)), TYPES, concurrency=8) as stream:
        async for _ in stream:
            n += 1
            if n == 10:
                break
    assert len(anyio.get_running_tasks()) == before
    assert searcher.running == 0
    assert searcher.in_flight == 0
    assert len(searcher.calls) <= 8 + 16  # only the streams that had started; the 10k ids were not read


async def test_caller_cancellation_stops_the_pull() -> None:
    searcher = FakeSearcher(pages=50, delay=0.001)
    before = len(anyio.get_running_tasks())
    with anyio.CancelScope() as scope:
        async with pull(searcher, PATIENTS, TYPES) as stream:
            async for _ in stream:
                scope.cancel()
                await anyio.sleep(0)
                pytest.fail("cancellation not delivered")
    assert scope.cancelled_caught
    assert len(anyio.get_running_tasks()) == before
    assert searcher.running == 0


async def test_consumer_error_propagates_unwrapped() -> None:
    def fail(item: PullItem) -> None:
        raise ValueError("consumer")

    with pytest.raises(ValueError, match="consumer"):
        await drain(pull(FakeSearcher(), PATIENTS, TYPES), fail)


async def test_slow_consumer_bounds_what_is_fetched_ahead() -> None:
    searcher = FakeSearcher(pages=6, page_size=4)
    buffer, concurrency = 2, 3
    bound = (1 + buffer + concurrency) * searcher.page_size
    consumed = peak = 0
    async with pull(searcher, PATIENTS, TYPES, concurrency=concurrency, buffer=buffer) as stream:
        async for _ in stream:
            consumed += 1
            for _ in range(5):  # a slow consumer: producers get many turns per item
                await anyio.sleep(0)
            peak = max(peak, searcher.fetched - consumed)
            assert searcher.fetched - consumed <= bound
    assert consumed == len(PATIENTS) * 3 * 6 * 4
    assert peak > bound // 2  # the producers did run ahead, up to the bound


async def test_lazy_async_patients() -> None:
    read = 0

    async def ids() -> AsyncIterator[str]:
        nonlocal read
        for i in range(100_000):
            read += 1
            yield f"p{i}"

    async with pull(FakeSearcher(pages=1), ids(), ["Condition"], concurrency=4, buffer=2) as stream:
        async for _ in stream:
            break
    assert read <= 4 + 2 + 2


async def test_first_failure_raises_pull_error_naming_patient_and_query() -> None:
    searcher = FakeSearcher(pages=3, delay=0.001, fail={("p3", "Condition")}, fail_after_pages=1)
    with pytest.raises(PullError) as info:
        await drain(pull(searcher, PATIENTS, TYPES, concurrency=4))
    err = info.value
    assert err.patient_id == "p3"
    assert err.query == "Condition"
    assert isinstance(err.__cause__, RuntimeError)
    assert "Condition" in str(err)
    assert "p3" not in str(err)  # ids stay out of messages (they end up in logs)
    assert searcher.running == 0


async def test_collect_mode_records_failures_and_goes_on() -> None:
    searcher = FakeSearcher(pages=2, fail={("p3", "Condition"), ("p7", "Patient")})
    expected = {
        t
        for t in await sequential(FakeSearcher(pages=2), PATIENTS, TYPES)
        if (t[0], t[1]) not in {("p3", "Condition"), ("p7", "Patient")}
    }
    events: list[PullProgress] = []
    got = set()
    checkpoint = PullCheckpoint()
    async with pull(
        searcher, PATIENTS, TYPES, on_error="collect", progress=events.append, checkpoint=checkpoint
    ) as stream:
        async for item in stream:
            got.add((item.patient_id, item.query, item.resource["id"]))
    assert got == expected
    assert sorted((f.patient_id, f.query) for f in stream.failures) == [
        ("p3", "Condition"),
        ("p7", "Patient"),
    ]
    assert all(isinstance(f.error, RuntimeError) for f in stream.failures)
    assert not checkpoint.is_complete("p3", "Condition")
    assert checkpoint.is_complete("p3", "Patient")
    last = events[-1]
    assert last.event == "finished"
    assert (last.streams_done, last.streams_failed, last.patients_done) == (34, 2, 12)
    assert {e.event for e in events} >= {"started", "page", "stream_done", "stream_failed", "finished"}


async def test_outcomes_are_kept_per_stream(searcher: FakeSearcher) -> None:
    async with pull(searcher, PATIENTS[:2], ["Condition"]) as stream:
        async for _ in stream:
            pass
    assert sorted(o.patient_id for o in stream.outcomes) == ["p0", "p1"]
    assert all(o.query == "Condition" and len(o.outcomes) == 1 for o in stream.outcomes)


async def test_equal_outcomes_of_many_streams_are_kept_once(searcher: FakeSearcher) -> None:
    # Epic repeats the same warnings on nearly every searchset: a parsed copy per stream would make the
    # pull's memory grow with the patient count.
    async with pull(searcher, PATIENTS, ["Condition"]) as stream:
        async for _ in stream:
            pass
    kept = [o.outcomes[0] for o in stream.outcomes]
    assert len(kept) == len(PATIENTS)  # every stream still reports its outcome
    assert len({id(o) for o in kept}) == 1


async def test_distinct_outcomes_stay_apart_and_past_the_table_are_kept_as_they_came(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_module, "_OUTCOME_KINDS", 1)

    def outcome(text: str) -> OperationOutcome:
        issue = OutcomeIssue(severity="warning", code="informational", details_text=text)
        return OperationOutcome(issues=(issue,), raw={"resourceType": "OperationOutcome"})

    class TwoKinds(FakeSearcher):
        def search(self, resource_type: str, /, **params: Any) -> Any:
            query = super().search(resource_type, **params)
            text = "first" if params["patient"] in {"p0", "p1"} else "second"

            async def pages() -> AsyncIterator[FakePage]:
                async for page in FakeQuery.pages(query):
                    yield FakePage(page.resources, [outcome(text)])

            query.pages = pages  # type: ignore[method-assign]
            return query

    async with pull(TwoKinds(pages=1), PATIENTS[:4], ["Condition"]) as stream:
        async for _ in stream:
            pass
    by_patient = {o.patient_id: o.outcomes[0] for o in stream.outcomes}
    assert by_patient["p0"] is by_patient["p1"]  # the first kind fits the table
    assert by_patient["p2"] == by_patient["p3"]
    assert by_patient["p2"] is not by_patient["p3"]  # the table is full: each keeps its own
    assert by_patient["p0"] != by_patient["p2"]


class CommittingCheckpoint(PullCheckpoint):
    """Keeps a stream's items only once the pull marks it complete (what the CLI does on disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[tuple[str, str], list[Any]] = {}
        self.committed: list[tuple[str, str, str]] = []

    async def mark_complete(self, patient_id: str, query: str) -> None:
        self.committed.extend(self.pending.pop((patient_id, query), []))
        await super().mark_complete(patient_id, query)

    async def mark_failed(self, patient_id: str, query: str) -> None:
        self.pending.pop((patient_id, query), None)


async def test_resume_after_a_crash_gives_the_clean_set_once(tmp_path: Any) -> None:
    expected = await sequential(FakeSearcher(pages=3), PATIENTS, TYPES)
    checkpoint = CommittingCheckpoint()
    searcher = FakeSearcher(pages=3)
    seen = 0

    def keep_then_crash(item: PullItem) -> None:
        nonlocal seen
        checkpoint.pending.setdefault((item.patient_id, item.query), []).append(
            (item.patient_id, item.query, item.resource["id"])
        )
        seen += 1
        if seen == 40:
            raise KeyError("crash")

    with pytest.raises(KeyError):
        await drain(pull(searcher, PATIENTS, TYPES, concurrency=3, checkpoint=checkpoint), keep_then_crash)
    first = len(checkpoint.committed)
    assert 0 < first < len(expected)
    path = tmp_path / "cp.json"
    await checkpoint.save(path)
    reloaded = await PullCheckpoint.load(path)
    assert len(reloaded) == len(checkpoint) > 0

    checkpoint.pending.clear()
    searcher2 = FakeSearcher(pages=3)
    async with pull(searcher2, PATIENTS, TYPES, concurrency=3, checkpoint=checkpoint) as stream:
        async for item in stream:
            checkpoint.pending.setdefault((item.patient_id, item.query), []).append(
                (item.patient_id, item.query, item.resource["id"])
            )
    assert len(checkpoint.committed) == len(set(checkpoint.committed)) == len(expected)
    assert set(checkpoint.committed) == set(expected)
    assert stream.progress.streams_skipped == len(reloaded)
    assert len(searcher2.calls) == len(PATIENTS) * 3 - len(
        reloaded
    )  # completed streams were not fetched again


async def test_iterating_without_async_with_runs_the_pull_in_rounds() -> None:
    expected = await sequential(FakeSearcher(), PATIENTS, TYPES)
    searcher = FakeSearcher()
    stream = pull(searcher, PATIENTS, TYPES)
    got = [(item.patient_id, item.query, item.resource["id"]) async for item in stream]
    assert sorted(got) == sorted(expected)
    assert searcher.running == 0
    with pytest.raises(RuntimeError, match="entered only once"):
        async with stream:
            pass


async def test_bad_arguments_fail_before_anything_runs() -> None:
    with pytest.raises(ConfigurationError):
        pull(FakeSearcher(), PATIENTS, TYPES, concurrency=0)
    with pytest.raises(ConfigurationError):
        pull(FakeSearcher(), "p1", TYPES)
    with pytest.raises(ConfigurationError):
        pull(FakeSearcher(), PATIENTS, ["Observation?category=therapy"])
    with pytest.raises(ConfigurationError, match="non-empty"):
        await drain(pull(FakeSearcher(), ["p1", ""], TYPES))


async def test_checkpoint_file_round_trip(tmp_path: Any) -> None:
    cp = PullCheckpoint(
        [("pat-A1", "Condition"), ("pat-B2", "Condition"), ("pat-A1", "Patient")],
        path=tmp_path / "c.json",
        save_every=2,
    )
    await cp.mark_complete("c", "Condition")
    await cp.mark_complete("d", "Condition")  # second mark: autosaved
    loaded = await PullCheckpoint.load(tmp_path / "c.json")
    assert loaded.to_json() == cp.to_json()
    assert ("d", "Condition") in loaded
    assert "pat-A1" not in repr(loaded)
    missing = await PullCheckpoint.load(tmp_path / "none.json")
    assert len(missing) == 0


# -- repeated patient ids, reprs ---------------------------------------------------------------------------


QUERIES = ["Condition", "Patient"]


async def items_of(stream: PullStream) -> list[PullItem]:
    async with stream as running:
        return [item async for item in running]


async def test_repeated_patient_ids_are_pulled_once_in_first_seen_order() -> None:
    searcher = OnePageSearcher()
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

    searcher = OnePageSearcher()
    stream = pull(searcher, ids(), QUERIES, concurrency=2)
    items = await items_of(stream)
    assert sorted({i.patient_id for i in items}) == ["x", "y", "z"]
    assert len(searcher.calls) == 3 * len(QUERIES)
    assert stream.progress.patients_seen == 3
    assert stream.progress.streams_total == stream.progress.streams_done == 3 * len(QUERIES)


async def test_reprs_hold_no_patient_id_and_no_resource() -> None:
    pid = "eq081-VQEgP8drUUqCWzHfw3"
    stream = pull(OnePageSearcher(), [pid], QUERIES)
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
