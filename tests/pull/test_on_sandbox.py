"""client.pull against the in-process sandbox: same set as sequential searches, bounded concurrency, errors."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, PullError, StaticTokenAuth
from epic_fhir_async.pull import PullCheckpoint, PullItem, PullStream
from epic_fhir_async.pull._queries import expand_queries
from epic_fhir_async.sandbox import EpicSandbox, SandboxConfig

pytestmark = pytest.mark.anyio

TYPES = ["Patient", "Condition", "Observation", "MedicationRequest"]


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts FHIR requests in flight at the transport (below the retry layer: every attempt counts)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, hold_until: int = 0) -> None:
        self.inner = inner
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0
        # Requests wait here until ``hold_until`` are in flight at once, so reaching the limit does not
        # depend on scheduling luck; the timeout only keeps a broken pull from hanging the test.
        self.hold_until = hold_until
        self.gate = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fhir = "/api/FHIR/R4/" in request.url.path
        if fhir:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if fhir:
                if self.in_flight >= self.hold_until:
                    self.gate.set()
                with anyio.move_on_after(2):
                    await self.gate.wait()
            return await self.inner.handle_async_request(request)
        finally:
            if fhir:
                self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def sandbox() -> EpicSandbox:
    return EpicSandbox(SandboxConfig(seed=3, patients=20))


def client_for(
    sb: EpicSandbox, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
) -> EpicFHIRClient:
    token = sb.issue_token("pull-tests")
    return EpicFHIRClient(
        sb.base_url, auth=StaticTokenAuth(token), transport=transport or sb.transport(), **kwargs
    )


async def drain(stream: PullStream) -> list[PullItem]:
    async with stream as running:
        return [item async for item in running]


def patient_ids(sb: EpicSandbox, n: int) -> list[str]:
    from epic_fhir_async.sandbox._data import build_dataset

    return build_dataset(seed=3, patients=20).patient_ids[:n]


async def test_pull_equals_sequential_searches(sandbox: EpicSandbox) -> None:
    patients = patient_ids(sandbox, 12)
    async with client_for(sandbox) as client:
        expected = []
        for pid in patients:
            for q in expand_queries(TYPES):
                async for resource in client.search(q.resource_type, **q.params_for(pid)):
                    expected.append((pid, q.label, resource["resourceType"], resource["id"]))
        got = []
        async with client.pull(patients, TYPES, concurrency=6) as stream:
            async for item in stream:
                got.append((item.patient_id, item.query, item.resource["resourceType"], item.resource["id"]))
    assert len(got) == len(set(got))
    assert sorted(got) == sorted(expected)
    assert {t[2] for t in got} == {"Patient", "Condition", "Observation", "MedicationRequest"}
    assert sum(1 for t in got if t[2] == "Patient") == len(patients)  # one read per patient through _id
    assert stream.progress.streams_done == len(patients) * 6  # Observation expanded to three categories
    # Epic's warnings stay beside the data, per stream: Derrick Lin has no labs, so that stream carries 4101.
    derrick = "eq081-VQEgP8drUUqCWzHfw3"
    warnings = {
        (s.patient_id, s.query): [c for o in s.outcomes for c in o.epic_codes] for s in stream.outcomes
    }
    assert "4101" in warnings[(derrick, "Observation?category=laboratory")]
    assert not any(t[0] == derrick and t[1] == "Observation?category=laboratory" for t in got)


async def test_concurrency_never_exceeds_the_limit(sandbox: EpicSandbox) -> None:
    counting = CountingTransport(sandbox.transport(), hold_until=5)
    async with client_for(sandbox, counting) as client:
        await drain(client.pull(patient_ids(sandbox, 16), TYPES, concurrency=5))
    assert counting.gate.is_set()  # five requests were in flight together...
    assert counting.max_in_flight == 5  # ...and never more
    assert counting.requests >= 16 * 6


async def test_break_leaves_no_task_and_no_request(sandbox: EpicSandbox) -> None:
    counting = CountingTransport(sandbox.transport())
    async with client_for(sandbox, counting) as client:
        before = len(anyio.get_running_tasks())
        async with client.pull(patient_ids(sandbox, 20), TYPES, concurrency=8) as stream:
            n = 0
            async for _ in stream:
                n += 1
                if n == 5:
                    break
        assert len(anyio.get_running_tasks()) == before
        assert counting.in_flight == 0
        sent = counting.requests
        await anyio.sleep(0.01)
        assert counting.requests == sent  # nothing keeps fetching after the block


async def test_an_epic_error_names_patient_and_query(sandbox: EpicSandbox) -> None:
    async with client_for(sandbox) as client:
        with pytest.raises(PullError) as info:
            await drain(client.pull(["does-not-exist-1"], ["Observation?category=therapy2"], expand=False))
    assert info.value.patient_id == "does-not-exist-1"
    assert info.value.query == "Observation?category=therapy2"
    assert info.value.__cause__ is not None


async def test_collect_mode_goes_on_and_resume_retries_only_failures(sandbox: EpicSandbox) -> None:
    patients = patient_ids(sandbox, 6)
    types = [
        "Condition",
        "Observation",
    ]  # bare Observation with expand=False: Epic requires a category -> 400
    checkpoint = PullCheckpoint()
    # epic_rules=False: the searches reach the emulator and fail per stream (with the rules on, the bare
    # Observation would end the whole pull before anything is sent).
    async with client_for(sandbox, epic_rules=False) as client:
        async with client.pull(
            patients, types, expand=False, on_error="collect", checkpoint=checkpoint
        ) as stream:
            got = [item async for item in stream]
        assert {f.query for f in stream.failures} == {"Observation"}
        assert len(stream.failures) == len(patients)
        assert {i.query for i in got} == {"Condition"}
        assert all(checkpoint.is_complete(p, "Condition") for p in patients)
        async with client.pull(
            patients, types, expand=False, on_error="collect", checkpoint=checkpoint
        ) as again:
            assert [i async for i in again] == []
        assert again.progress.streams_skipped == len(patients)
        assert len(again.failures) == len(patients)
