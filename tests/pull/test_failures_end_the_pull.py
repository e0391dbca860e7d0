"""A pull whose credentials or setup fail stops at once, even with on_error="collect" (one token request
round, not one per stream), hands out the pages already fetched before it raises, keeps what it delivered,
and still collects the failures of single patients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest

from epic_fhir_async import (
    BackendServicesAuth,
    ConfigurationError,
    EpicFHIRClient,
    Forbidden,
    NotFound,
    PullError,
    RetryPolicy,
    ServerError,
    StaticTokenAuth,
    TokenRequestError,
    TransportError,
    Unauthorized,
)
from epic_fhir_async.auth import generate_private_key, public_jwks
from epic_fhir_async.auth._token_manager import is_token_failure
from epic_fhir_async.pull import PullCheckpoint, PullItem
from epic_fhir_async.pull._stream import PullStream, pull
from epic_fhir_async.sandbox import EpicSandbox, SandboxConfig

from .conftest import FakePage, Wire

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_retry_delay")]

CLIENT = "pull-failures"
#: Four streams per patient (no expansion needed: Observation carries its category).
TYPES = ["Patient", "Condition", "Observation?category=laboratory", "MedicationRequest"]
QUERIES = ["Condition", "Patient"]
#: Two attempts per request without waiting: discovery GETs are retried by the client's policy.
FAST = RetryPolicy(max_attempts=2, backoff_base=0.0, jitter=0.0)


@pytest.fixture
def sandbox() -> EpicSandbox:
    """A sandbox of 30 patients for one test (tests register clients on it)."""
    return EpicSandbox(SandboxConfig(seed=3, patients=30))


@pytest.fixture(scope="module")
def key() -> Any:
    return generate_private_key("ES256")


def backend_auth(
    sb: EpicSandbox, key: Any, *, discover: bool = False, client_id: str = CLIENT
) -> BackendServicesAuth:
    return BackendServicesAuth(client_id, key, token_url=None if discover else sb.token_url)


async def consume(
    stream: PullStream, items: list[PullItem], on_item: Callable[[PullItem], object] | None = None
) -> None:
    """Consume the pull into ``items`` (calling ``on_item`` after each)."""
    async with stream as running:
        async for item in running:
            items.append(item)
            if on_item is not None:
                on_item(item)


async def run(stream: PullStream, items: list[PullItem]) -> PullError:
    """Consume the pull into ``items`` until it raises; the error it raised."""
    with pytest.raises(PullError) as info:
        await consume(stream, items)
    return info.value


@pytest.mark.parametrize(
    ("fault", "cause", "token_requests", "discovery_requests"),
    [
        # Epic's token endpoint down or failing: the one token request is retried once (transient), then fails.
        ("token-500", TokenRequestError, 2, 0),
        ("token-down", TransportError, 2, 0),
        # Unknown client id or a key the client was not registered with: Epic's invalid_client with a null
        # description, which is retried once too (it is also what Epic's transient flakes look like).
        ("unknown-client", TokenRequestError, 2, 0),
        ("wrong-key", TokenRequestError, 2, 0),
        # SMART discovery: smart-configuration then metadata both missing (a 5xx would be retried by the
        # client's RetryPolicy first, then fail the same way), or the server unreachable.
        ("discovery-404", ConfigurationError, 0, 2),
        ("discovery-down", TransportError, 0, 2),
    ],
)
@pytest.mark.parametrize("on_error", ["collect", "raise"])
async def test_setup_failure_stops_the_pull_after_one_token_round(
    sandbox: EpicSandbox,
    key: Any,
    fault: str,
    cause: type[Exception],
    token_requests: int,
    discovery_requests: int,
    on_error: Any,
) -> None:
    wire = Wire(sandbox)
    client_id = CLIENT
    if fault == "wrong-key":
        sandbox.register_client(CLIENT, public_jwks(generate_private_key("ES256")))
    elif fault != "unknown-client":
        sandbox.register_client(CLIENT, public_jwks(key))
    if fault == "unknown-client":
        client_id = "never-registered"
    if fault.startswith("token-"):
        wire.token = "500" if fault == "token-500" else "down"
    if fault.startswith("discovery-"):
        wire.discovery = "404" if fault == "discovery-404" else "down"
    auth = backend_auth(sandbox, key, discover=fault.startswith("discovery-"), client_id=client_id)
    patients = sandbox.dataset.patient_ids[:30]
    items: list[PullItem] = []
    async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=wire, retry=FAST) as client:
        stream = client.pull(patients, TYPES, concurrency=8, on_error=on_error)
        error = await run(stream, items)
    # 30 patients x 4 streams, yet one token round: not one token request per stream.
    assert (wire.token_requests, wire.discovery_requests) == (token_requests, discovery_requests)
    assert auth.token_manager.fetches == (1 if token_requests else 0)
    assert wire.fhir_requests == 0
    assert items == []
    # Not about one patient: no patient named, the real error as the cause, nothing collected per stream.
    assert error.patient_id is None
    assert isinstance(error.__cause__, cause)
    assert is_token_failure(error.__cause__)
    assert "not one patient" in str(error)
    assert stream.failures == []
    assert stream.progress.streams_done == 0


async def test_a_401_that_survives_the_token_stops_the_pull(sandbox: EpicSandbox) -> None:
    wire = Wire(sandbox)
    auth = StaticTokenAuth("not-a-token-the-server-issued")  # cannot refresh: every request is a 401
    async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=wire) as client:
        stream = client.pull(sandbox.dataset.patient_ids[:30], TYPES, concurrency=8, on_error="collect")
        error = await run(stream, [])
    assert isinstance(error.__cause__, Unauthorized)
    assert error.patient_id is None
    assert stream.failures == []
    assert wire.fhir_requests <= 8  # the streams already started, not all 120


async def test_a_token_failure_mid_pull_keeps_what_was_delivered(sandbox: EpicSandbox, key: Any) -> None:
    """The server revokes the token and the token endpoint fails: the pull ends with PullError, and every
    stream the checkpoint recorded as complete was delivered in full (no page fetched and dropped)."""
    sandbox.register_client(CLIENT, public_jwks(key))
    patients = sandbox.dataset.patient_ids[:12]
    wire = Wire(sandbox)
    checkpoint = PullCheckpoint()
    items: list[PullItem] = []

    def broken(_: PullItem) -> None:
        if len(items) == 25:  # a while into the pull: the token is revoked and cannot be renewed
            wire.token = "500"
            wire.fhir = lambda _: httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )

    auth = backend_auth(sandbox, key)
    async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=wire) as client:
        stream = client.pull(
            patients, TYPES, concurrency=4, buffer=4, on_error="collect", checkpoint=checkpoint
        )
        with pytest.raises(PullError) as info:
            await consume(stream, items, broken)
    assert isinstance(info.value.__cause__, TokenRequestError)
    assert info.value.patient_id is None
    assert wire.token_requests == 1 + 2  # the first token, then one failed round (with its one retry)
    assert stream.failures == []
    assert len(checkpoint) >= 1
    # Every completed stream is there in full, compared with a sequential search from a healthy client.
    got = {(i.patient_id, i.query, i.resource["id"]) for i in items}
    assert len(got) == len(items)
    healthy = StaticTokenAuth(sandbox.issue_token("pull-failures-check"))
    async with EpicFHIRClient(sandbox.base_url, auth=healthy, transport=sandbox.transport()) as check:
        for query in stream.queries:
            for pid in patients:
                if not checkpoint.is_complete(pid, query.label):
                    continue
                async for resource in check.search(query.resource_type, **query.params_for(pid)):
                    assert (pid, query.label, resource["id"]) in got


async def test_errors_of_one_patient_are_still_collected(sandbox: EpicSandbox, key: Any) -> None:
    sandbox.register_client(CLIENT, public_jwks(key))
    patients = sandbox.dataset.patient_ids[:6]
    p404, p403, p500 = patients[:3]
    wire = Wire(sandbox)

    def per_patient(request: httpx.Request) -> httpx.Response | None:
        resource_type = request.url.path.rsplit("/", 1)[-1]
        pid = request.url.params.get("patient")
        if (pid, resource_type) == (p404, "Condition"):
            return httpx.Response(
                404,
                json={
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "fatal", "code": "not-found", "details": {"text": "not found"}}],
                },
            )
        if (pid, resource_type) == (p403, "MedicationRequest"):
            return httpx.Response(403, headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'})
        if (pid, resource_type) == (p500, "Condition"):
            return httpx.Response(503, text="busy")
        return None

    wire.fhir = per_patient
    auth = backend_auth(sandbox, key)
    unknown = "no-such-patient"  # the sandbox answers Epic's 400 OperationOutcome (4100) for its searches
    items: list[PullItem] = []
    async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=wire, retry=FAST) as client:
        stream = client.pull([*patients, unknown], TYPES, concurrency=8, on_error="collect")
        await consume(stream, items)
    failed = {(f.patient_id, f.query, type(f.error)) for f in stream.failures}
    assert {
        (p404, "Condition", NotFound),
        (p403, "MedicationRequest", Forbidden),
        (p500, "Condition", ServerError),
    } <= failed
    assert {f.query for f in stream.failures if f.patient_id == unknown} >= {"Condition", "MedicationRequest"}
    assert {f.patient_id for f in stream.failures} == {p404, p403, p500, unknown}
    assert auth.token_manager.fetches == 1
    assert wire.token_requests == 1
    # Everything else arrived: each healthy patient's Patient resource, for instance.
    assert {i.patient_id for i in items if i.query == "Patient"} == set(patients)
    assert stream.progress.streams_done + stream.progress.streams_failed == len(TYPES) * (len(patients) + 1)


# -- a setup failure after pages were fetched --------------------------------------------------------------


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
