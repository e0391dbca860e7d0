"""``async for item in client.pull(...)`` without ``async with``: the pull runs in rounds inside ``__anext__``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from epic_fhir_async import EpicFHIRClient, NotFound, PullError, StaticTokenAuth, Unauthorized
from epic_fhir_async.pull import PullCheckpoint, PullItem
from epic_fhir_async.sandbox import EpicSandbox, SandboxConfig

from .conftest import Meter, connect

pytestmark = pytest.mark.anyio


# Small pages, so every stream with data spans several rounds.
TYPES = ["Condition?_count=2", "Observation?category=laboratory&_count=5", "Patient"]


@pytest.fixture(scope="module")
def sandbox() -> EpicSandbox:
    return EpicSandbox(SandboxConfig(seed=5, patients=12))


def key(item: PullItem) -> tuple[str, str, str]:
    return item.patient_id, item.query, item.resource["id"]


async def settle() -> None:
    """Let anything still scheduled run (a leftover task would send a request here)."""
    for _ in range(50):
        await anyio.lowlevel.checkpoint()


async def test_bare_for_yields_what_async_with_yields(sandbox: EpicSandbox) -> None:
    patients = sandbox.dataset.patient_ids[:8]
    meter = Meter(sandbox)
    async with connect(sandbox, meter) as client:
        async with client.pull(patients, TYPES, concurrency=4) as stream:
            entered = [key(i) async for i in stream]
        streams = len(patients) * len(stream.queries)
        requests = meter.total
        bare_stream = client.pull(patients, TYPES, concurrency=4)
        bare = [key(i) async for i in bare_stream]
    assert requests > streams  # multi-page streams
    assert meter.total == 2 * requests  # the same requests, no more
    assert len(bare) == len(set(bare)) == len(entered) > 0
    assert set(bare) == set(entered)
    progress = bare_stream.progress
    assert progress.streams_done == progress.streams_total == streams
    assert progress.patients_done == len(patients)


async def test_a_round_never_exceeds_the_limit(sandbox: EpicSandbox) -> None:
    meter = Meter(sandbox, gate_at=3)
    async with connect(sandbox, meter) as client:
        items = [i async for i in client.pull(sandbox.dataset.patient_ids[:8], TYPES, concurrency=3)]
    assert items
    assert meter.released.is_set()  # three requests were in flight together...
    assert meter.peak == 3  # ...and never more


async def test_break_leaves_no_task_and_sends_nothing_more(sandbox: EpicSandbox) -> None:
    meter = Meter(sandbox)
    async with connect(sandbox, meter) as client:
        before = len(anyio.get_running_tasks())
        async for _ in client.pull(sandbox.dataset.patient_ids, TYPES, concurrency=4):
            break
        assert len(anyio.get_running_tasks()) == before
        assert meter.now == 0
        sent = meter.total
        assert 0 < sent <= 4  # one round
        await settle()
        assert meter.total == sent


async def test_cancelling_the_caller_cancels_the_round(sandbox: EpicSandbox) -> None:
    meter = Meter(sandbox, gate_at=99)  # every request waits at the gate: the round is in flight
    async with connect(sandbox, meter) as client:
        before = len(anyio.get_running_tasks())
        stream = client.pull(sandbox.dataset.patient_ids, TYPES, concurrency=4)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anext, aiter(stream))
                await anyio.wait_all_tasks_blocked()
                assert meter.now == 4
                scope.cancel()
        assert scope.cancelled_caught
        assert meter.now == 0
        assert len(anyio.get_running_tasks()) == before
        with pytest.raises(PullError, match="interrupted"):
            await anext(stream)  # not a silently shortened pull


async def test_aclose_closes_the_async_iterable_of_ids(sandbox: EpicSandbox) -> None:
    closed: list[bool] = []

    async def ids() -> AsyncIterator[str]:
        try:
            for pid in sandbox.dataset.patient_ids:
                yield pid
        finally:
            closed.append(True)

    meter = Meter(sandbox)
    async with connect(sandbox, meter) as client:
        stream = client.pull(ids(), TYPES, concurrency=2)
        async for _ in stream:
            break
        await stream.aclose()
        assert closed == [True]
        sent = meter.total
        assert [i async for i in stream] == []
        assert meter.total == sent


async def test_collect_mode_records_a_404_patient(sandbox: EpicSandbox) -> None:
    patients = sandbox.dataset.patient_ids[:5]
    meter = Meter(sandbox, missing=frozenset({patients[1]}))
    async with connect(sandbox, meter) as client:
        stream = client.pull(patients, ["Condition?_count=2", "Patient"], on_error="collect", concurrency=3)
        items = [i async for i in stream]
    assert [(f.patient_id, f.query, type(f.error)) for f in stream.failures] == [
        (patients[1], "Condition?_count=2", NotFound)
    ]
    assert {i.patient_id for i in items if i.query == "Patient"} == set(patients)
    assert stream.progress.streams_failed == 1
    assert stream.progress.streams_done == 2 * len(patients) - 1


async def test_raise_mode_raises_pull_error(sandbox: EpicSandbox) -> None:
    patients = sandbox.dataset.patient_ids[:5]
    meter = Meter(sandbox, missing=frozenset({patients[2]}))
    async with connect(sandbox, meter) as client:
        before = len(anyio.get_running_tasks())
        with pytest.raises(PullError) as info:
            async for _ in client.pull(patients, ["Condition?_count=2"], concurrency=2):
                pass
        assert len(anyio.get_running_tasks()) == before
    assert info.value.patient_id == patients[2]
    assert isinstance(info.value.__cause__, NotFound)


async def test_checkpoint_resume_in_bare_mode(sandbox: EpicSandbox) -> None:
    patients = sandbox.dataset.patient_ids[:6]
    meter = Meter(sandbox)
    checkpoint = PullCheckpoint()
    async with connect(sandbox, meter) as client:
        full = {key(i) async for i in client.pull(patients, TYPES, concurrency=3)}
        first: list[PullItem] = []
        async for item in client.pull(patients, TYPES, concurrency=3, checkpoint=checkpoint):
            first.append(item)
            if len(first) == len(full) // 2:
                break  # a crash half way
        done = {(p, q) for p, q, _ in full if checkpoint.is_complete(p, q)}
        assert done
        assert len(done) < len({(p, q) for p, q, _ in full})
        skipped = len(checkpoint)
        second = client.pull(patients, TYPES, concurrency=3, checkpoint=checkpoint)
        rest = [key(i) async for i in second]
    kept = {key(i) for i in first if (i.patient_id, i.query) in done}
    assert not {(p, q) for p, q, _ in rest} & done  # completed streams are not fetched again
    assert len(rest) == len(set(rest))
    assert kept | set(rest) == full
    assert second.progress.streams_skipped == skipped >= len(done)


async def test_a_refused_token_ends_the_pull_even_when_collecting(sandbox: EpicSandbox) -> None:
    meter = Meter(sandbox)
    auth = StaticTokenAuth("not-a-token-the-sandbox-issued")
    async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=meter) as client:
        stream = client.pull(sandbox.dataset.patient_ids[:6], TYPES, on_error="collect", concurrency=3)
        with pytest.raises(PullError) as info:
            async for _ in stream:
                pass
    assert info.value.patient_id is None
    assert isinstance(info.value.__cause__, Unauthorized)
    assert meter.total <= 3  # one round, then nothing
    assert stream.failures == []
