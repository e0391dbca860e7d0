"""A ``Retry-After`` that is a Unix timestamp (seconds or milliseconds, as real Bulk Data servers send) is read
as an instant by every loop: status polling and the kick-off wait until then, never that many seconds."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any

import anyio
import httpx
import pytest

from epic_fhir_async import BulkExportTooSoon, EpicFHIRClient, RateLimited, RetryPolicy, StaticTokenAuth
from epic_fhir_async._headers import parse_retry_after
from epic_fhir_async.bulk import PollCadence

BASE = "https://fhir.example.org/api/FHIR/R4"
STATUS = f"{BASE}/BulkRequest/job1"
DATE_NOW = parsedate_to_datetime("Fri, 15 Jan 2027 08:00:00 GMT").timestamp()
MANIFEST = {
    "transactionTime": "2026-01-01T00:00:00Z",
    "request": f"{BASE}/Group/g1/$export",
    "requiresAccessToken": True,
    "output": [],
    "error": [],
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("0", 0.0),
        ("1800000005", 5.0),  # epoch seconds, 5 s after "now"
        ("1800000005000", 5.0),  # epoch milliseconds
        ("1799999990", 0.0),  # an instant in the past: no wait
        ("Fri, 15 Jan 2027 08:00:05 GMT", 5.0),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_values_are_read_as_delays_or_instants(value: str, expected: float | None) -> None:
    now = DATE_NOW if "GMT" in value else 1_800_000_000.0
    result = parse_retry_after(value, now=now)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected, abs=0.01)


def _epoch_ms(seconds_from_now: float) -> str:
    return str(int((time.time() + seconds_from_now) * 1000))


@pytest.mark.anyio
@pytest.mark.parametrize("transport_retries", [1, 5], ids=["status-loop", "transport"])
async def test_a_429_with_an_epoch_ms_retry_after_on_a_status_poll_waits_until_that_instant(
    transport_retries: int,
) -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": _epoch_ms(1.0)})
        return httpx.Response(200, json=MANIFEST, headers={"Content-Type": "application/json"})

    client = EpicFHIRClient(
        BASE,
        auth=StaticTokenAuth("t"),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=transport_retries),
    )
    async with client:
        job = client.bulk_export_job(STATUS, cadence=PollCadence(initial=0.1, maximum=0.2))
        with anyio.fail_after(20):  # an epoch read as seconds would sleep for an hour here
            manifest = await job.wait()
    assert manifest.outputs == ()
    assert len(calls) == 2
    waited = calls[1] - calls[0]
    assert 0.3 <= waited <= 5.0


@pytest.mark.anyio
async def test_a_kickoff_refusal_with_an_epoch_retry_after_reports_seconds_from_now() -> None:
    too_recent: dict[str, Any] = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "throttled",
                "diagnostics": "The Client requested this Group too recently.",
            }
        ],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429,
            json=too_recent,
            headers={"Retry-After": str(int(time.time()) + 120), "Content-Type": "application/fhir+json"},
        )

    async with EpicFHIRClient(
        BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(BulkExportTooSoon) as caught:
            await client.bulk_export("g1")
    assert caught.value.retry_after is not None
    assert 100 <= caught.value.retry_after <= 121
    assert "retry in 1" in str(caught.value)  # 119 or 120 s, not an epoch


@pytest.mark.anyio
async def test_rate_limited_reports_an_epoch_retry_after_as_seconds_from_now() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": _epoch_ms(30.0)})

    async with EpicFHIRClient(
        BASE,
        auth=StaticTokenAuth("t"),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=1),
    ) as client:
        with pytest.raises(RateLimited) as caught:
            await client.read("Patient", "p1")
    assert caught.value.retry_after is not None
    assert 25 <= caught.value.retry_after <= 31
    assert "retry after 3" in str(caught.value) or "retry after 2" in str(caught.value)
