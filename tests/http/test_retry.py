"""Retries: RetryPolicy's pure decisions and argument checks, RetryTransport's behaviour (injected sleep and
clock: no real waiting), Retry-After values, the wait a RateLimited names, and connections cut mid-body."""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, formatdate

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from epic_fhir_async import (
    ConfigurationError,
    EpicFHIRClient,
    RateLimited,
    RetryPolicy,
    RetryTransport,
    ServerError,
    StaticTokenAuth,
    TransportError,
)
from epic_fhir_async._headers import parse_retry_after
from epic_fhir_async._retry import RETRY_SAFE, retry_delay, should_retry
from epic_fhir_async.sandbox import EpicSandbox
from tests.conftest import CAMILA, Recorder

BASE = "https://fhir.example.org/api/FHIR/R4"


# -- pure functions ------------------------------------------------------------------------------------


def test_should_retry_statuses_attempts_and_methods() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert should_retry(policy, attempt=1, method_ok=True, status_code=503)
    assert should_retry(policy, attempt=2, method_ok=True, status_code=429)
    assert not should_retry(policy, attempt=3, method_ok=True, status_code=503)
    assert not should_retry(policy, attempt=1, method_ok=True, status_code=400)
    assert not should_retry(policy, attempt=1, method_ok=False, status_code=503)
    assert should_retry(policy, attempt=1, method_ok=True, connection_error=True)
    assert not should_retry(
        RetryPolicy(retry_on_connection_errors=False), attempt=1, method_ok=True, connection_error=True
    )


def test_retry_delay_backoff_jitter_and_caps() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=5.0, jitter=0.5, max_total_wait=10.0)
    assert retry_delay(policy, attempt=1, rand=lambda: 0.0) == 1.0
    assert retry_delay(policy, attempt=2, rand=lambda: 0.0) == 2.0
    assert retry_delay(policy, attempt=10, rand=lambda: 0.0) == 5.0  # backoff_max
    assert retry_delay(policy, attempt=2, rand=lambda: 1.0) == 1.0  # jitter takes up to half off
    assert retry_delay(policy, attempt=3, waited=7.0, rand=lambda: 0.0) is None  # 7 + 4 > 10


def test_retry_delay_honours_retry_after_seconds_date_and_cap() -> None:
    policy = RetryPolicy(max_retry_after=60.0, max_total_wait=100.0)
    assert retry_delay(policy, attempt=1, retry_after="7") == 7.0
    now = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(now, timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert retry_delay(policy, attempt=1, retry_after=date, now=now) == pytest.approx(30.0)
    # Servers have sent epoch timestamps as Retry-After (seconds and milliseconds): read as instants, an hour
    # ahead is over the cap (never slept on) and an instant already past falls back to the backoff.
    assert retry_delay(policy, attempt=1, retry_after=str(int(now) + 3600), now=now) is None
    assert retry_delay(policy, attempt=1, retry_after=str(int(now + 20) * 1000), now=now) == pytest.approx(
        20.0
    )
    assert retry_delay(policy, attempt=1, retry_after=str(int(now) - 60), now=now, rand=lambda: 0.0) == 0.5
    assert retry_delay(policy, attempt=2, retry_after="0", rand=lambda: 0.0) == 1.0  # never "at once"


# -- transport -----------------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def make(handler: httpx.MockTransport, fake: FakeTime, max_attempts: int = 5) -> RetryTransport:
    return RetryTransport(
        handler,
        policy=RetryPolicy(max_attempts=max_attempts),
        sleep=fake.sleep,
        clock=fake.clock,
        rand=lambda: 0.0,
    )


class Tracked(httpx.AsyncByteStream):
    def __init__(self, closed: list[bool]) -> None:
        self.closed = closed

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        yield b"{}"

    async def aclose(self) -> None:
        self.closed.append(True)


pytestmark = pytest.mark.anyio


async def test_503_then_200_is_retried_and_discarded_responses_are_closed() -> None:
    fake = FakeTime()
    closed: list[bool] = []
    statuses = [503, 503, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(statuses.pop(0), stream=Tracked(closed))

    transport = make(httpx.MockTransport(handler), fake)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(BASE + "/Patient/x")
    assert response.status_code == 200
    assert fake.sleeps == [0.5, 1.0]
    assert transport.retries == 2
    assert len(closed) >= 2


async def test_post_not_retried_unless_marked_safe() -> None:
    fake = FakeTime()
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503 if len(calls) == 1 else 200)

    async with httpx.AsyncClient(transport=make(httpx.MockTransport(handler), fake)) as client:
        assert (await client.post(BASE + "/Observation", content=b"{}")).status_code == 503
        assert calls == ["POST"]
        calls.clear()
        request = client.build_request("POST", BASE + "/Observation/_search", data={"a": "1"})
        request.extensions[RETRY_SAFE] = True
        assert (await client.send(request)).status_code == 200
        assert calls == ["POST", "POST"]


async def test_connection_errors_are_retried_then_raised() -> None:
    fake = FakeTime()
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(
        transport=make(httpx.MockTransport(handler), fake, max_attempts=3)
    ) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(BASE + "/metadata")
    assert attempts == 3


async def test_absurd_retry_after_gives_rate_limited_without_sleeping() -> None:
    fake = FakeTime()
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "throttled"}]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "99999999"}, json=outcome)  # three years

    transport = make(httpx.MockTransport(handler), fake)
    async with EpicFHIRClient(BASE, transport=transport, auth=StaticTokenAuth("secret-token")) as client:
        client.http._transport = transport  # the fake clock/sleep transport
        with pytest.raises(RateLimited) as info:
            await client.read("Patient", "x")
    assert fake.sleeps == []
    assert info.value.retry_after == 99999999.0
    assert "secret-token" not in str(info.value) + repr(info.value)


async def test_retry_after_http_date_is_slept_on() -> None:
    fake = FakeTime()
    statuses = [429, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        status = statuses.pop(0)
        when = datetime.now(timezone.utc) + timedelta(seconds=20)
        return httpx.Response(status, headers={"Retry-After": format_datetime(when, usegmt=True)})

    async with httpx.AsyncClient(transport=make(httpx.MockTransport(handler), fake)) as client:
        assert (await client.get(BASE + "/Patient/x")).status_code == 200
    assert len(fake.sleeps) == 1
    assert 15.0 < fake.sleeps[0] <= 20.0


async def test_429_closes_the_shared_gate_for_every_request() -> None:
    fake = FakeTime()
    first = True
    sent_at: dict[str, float] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal first
        if first:
            first = False
            return httpx.Response(429, headers={"Retry-After": "10"})
        sent_at.setdefault("/" + request.url.path.rsplit("/", 1)[1], fake.now)
        return httpx.Response(200)

    transport = make(httpx.MockTransport(handler), fake)
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(BASE + "/a")  # gets the 429, waits 10 s, succeeds
        await client.get(BASE + "/b")  # gate already open again
        assert sent_at["/a"] == 1010.0
        # A second 429 on /c pauses /d too, although /d never saw a 429.
        fake.now = 2000.0
        first = True

        async def get(path: str) -> None:
            await client.get(BASE + path)

        async with anyio.create_task_group() as tg:
            tg.start_soon(get, "/c")
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            tg.start_soon(get, "/d")
    assert sent_at["/c"] >= 2010.0
    assert sent_at["/d"] >= 2010.0


async def test_a_pause_behind_the_shared_gate_counts_against_max_total_wait() -> None:
    # Another request's 429 closed the gate for 100 s; this request may wait only what its policy allows in
    # total, so a request's retries and pauses keep their stated bound (max_attempts * timeout + max_total_wait).
    fake = FakeTime()
    transport = RetryTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)),
        policy=RetryPolicy(max_total_wait=3.0),
        sleep=fake.sleep,
        clock=fake.clock,
    )
    transport._gate.open_at = fake.now + 100.0
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(BASE + "/Patient/x")).status_code == 200
    assert fake.sleeps == [3.0]


async def test_server_error_after_retries_run_out_and_logs_are_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeTime()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    transport = make(httpx.MockTransport(handler), fake, max_attempts=2)
    caplog.set_level(logging.DEBUG, logger="epic_fhir_async")
    async with EpicFHIRClient(
        BASE, transport=httpx.MockTransport(handler), auth=StaticTokenAuth("tok-123")
    ) as c:
        c.http._transport = transport
        with pytest.raises(ServerError):
            await c.request("GET", "Observation", params={"patient": "PATIENT-ID-42"})
    text = caplog.text
    assert "retrying GET https://fhir.example.org/api/FHIR/R4/Observation" in text
    assert "PATIENT-ID-42" not in text
    assert "tok-123" not in text
    assert "Bearer" not in text


# -- RetryPolicy's arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_attempts": 0}, "max_attempts=0"),
        ({"max_attempts": -1}, "int >= 1"),
        ({"max_attempts": 2.5}, "int >= 1"),
        ({"max_attempts": True}, "int >= 1"),
        ({"backoff_base": -0.1}, "backoff_base=-0.1"),
        ({"backoff_max": math.nan}, "backoff_max=nan"),
        ({"max_total_wait": -1}, "seconds >= 0"),
        ({"max_retry_after": "60"}, "max_retry_after='60'"),
        ({"jitter": 1.5}, "between 0 and 1"),
        ({"jitter": -0.1}, "between 0 and 1"),
        ({"statuses": frozenset({99})}, "ints 100-599"),
        ({"statuses": "429"}, "ints 100-599"),
    ],
)
def test_retry_policy_validates_its_arguments(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_retry_policy_accepts_edge_values_and_any_collection_of_statuses() -> None:
    statuses: object = {503, 429}  # a set, not the annotated frozenset
    policy = RetryPolicy(max_attempts=1, backoff_base=0, jitter=0, max_total_wait=math.inf, statuses=statuses)  # type: ignore[arg-type]
    assert policy.statuses == frozenset({429, 503})
    assert hash(policy)  # still a frozen, hashable value


@pytest.mark.parametrize(("header", "expected"), [("300", "retry after 300 s"), (None, None)])
async def test_rate_limited_message_names_the_wait(header: str | None, expected: str | None) -> None:
    headers = {"Retry-After": header} if header else {}
    recorder = Recorder(lambda request: httpx.Response(429, headers=headers))
    async with recorder.client(
        retry=RetryPolicy(max_attempts=3, max_retry_after=60, backoff_base=0.0)
    ) as client:
        with pytest.raises(RateLimited) as info:
            await client.read("Patient", CAMILA)
    if expected is None:
        assert info.value.retry_after is None
        assert "retry after" not in str(info.value)
    else:
        assert len(recorder.requests) == 1  # 300 s is beyond max_retry_after: not slept on
        assert info.value.retry_after == 300
        assert expected in str(info.value)


# -- Retry-After values ---------------------------------------------------------------------------------


def test_retry_after_seconds_and_dates() -> None:
    now = time.time()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    future = formatdate(now + 90, usegmt=True)
    parsed = parse_retry_after(future, now=now)
    assert parsed is not None
    assert 85 <= parsed <= 91
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now=now) == 0.0
    # Epoch timestamps (seconds, milliseconds) are instants: the wait until then, none when past.
    assert parse_retry_after("1767225600", now=1767225500.0) == 100.0
    assert parse_retry_after("1767225600000", now=1767225500.0) == 100.0
    assert parse_retry_after("1767225600", now=1767225700.0) == 0.0


@given(st.text(max_size=40))
def test_retry_after_total(value: str) -> None:
    result = parse_retry_after(value)
    assert result is None or result >= 0.0


# -- connections cut mid-body ----------------------------------------------------------------------------


async def _read_until_it_fails(client: EpicFHIRClient, patient_id: str) -> None:
    for _ in range(40):  # half the answers are cut: one of 40 reads fails but for a 1e-12 chance
        await client.read("Patient", patient_id)


async def test_served_connections_cut_mid_body_are_retried_and_never_escape_as_httpx_errors() -> None:
    # Over a socket the headers arrive before the cut: the retrying transport must read the body before it
    # returns the response, or the cut surfaces later as a bare httpx.RemoteProtocolError.
    sb = EpicSandbox(seed=1, patients=2, page_size=5)
    token = sb.issue_token("drops")
    sb.faults.drop_rate = 0.5
    async with sb.serve(port=0) as base_url:
        retry = RetryPolicy(max_attempts=30, backoff_base=0.001, backoff_max=0.002)
        async with EpicFHIRClient(base_url, auth=StaticTokenAuth(token), retry=retry) as client:
            patient = await client.read("Patient", sb.dataset.patient_ids[0])
            found = [r async for r in client.search("Condition", patient=patient["id"])]
        async with EpicFHIRClient(
            base_url, auth=StaticTokenAuth(token), retry=RetryPolicy(max_attempts=1)
        ) as c:
            with pytest.raises(TransportError):  # never an httpx exception
                await _read_until_it_fails(c, patient["id"])
    assert found
    assert sb.stats["faults:drop"] > 1
