"""The work per response is bounded, not only its bytes: parsing JSON built for it (``[],[],...``) costs ~25x its
size in memory, and the issue's bench saw 3.2 GB for a 100 MiB resource and 1.7 GB (and a 39 MB ``str(exc)``)
for an OperationOutcome with a million issues. A body holding one resource is read under
``max_resource_bytes`` (16 MiB); an error body is read up to 1 MiB and only then parsed; an OperationOutcome
keeps 100 issues and a message names 10."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest

from epic_fhir_async import BadRequest, EpicFHIRClient, OperationOutcome, ResponseTooLarge, StaticTokenAuth
from epic_fhir_async._config import MAX_ERROR_BODY_BYTES, MAX_RESOURCE_BYTES
from epic_fhir_async._outcome import MAX_OUTCOME_ISSUES, SHOWN_ISSUES

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"
JSON = {"content-type": "application/fhir+json"}


class Chunks(httpx.AsyncByteStream):
    """The body in 64 KiB pieces, as from a socket (a bytes body is read by httpx itself, up front)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 65536):
            yield self.data[start : start + 65536]


def _client(body: bytes, status: int = 200) -> EpicFHIRClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, stream=Chunks(body), headers=JSON)

    return EpicFHIRClient(BASE, auth=StaticTokenAuth("t" * 20), transport=httpx.MockTransport(handler))


async def test_a_resource_built_to_amplify_is_refused_before_it_is_parsed() -> None:
    body = b'{"resourceType": "Patient", "x": [' + b"[]," * (7 * 1024 * 1024) + b"[]]}"  # 21 MiB
    assert len(body) > MAX_RESOURCE_BYTES
    async with _client(body) as client:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLarge, match="max_resource_bytes"):
                await client.read("Patient", "p")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # Parsed, it would be ~7 million lists (~500 MB); refused, what is held is the body read so far.
    assert peak < 3 * MAX_RESOURCE_BYTES


async def test_an_outcome_with_many_issues_keeps_a_hundred_and_names_ten() -> None:
    issues = b",".join(
        [b'{"severity": "error", "code": "invalid"}'] * 20_000
    )  # ~800 KB: under the error limit
    body = b'{"resourceType": "OperationOutcome", "issue": [' + issues + b"]}"
    assert len(body) < MAX_ERROR_BODY_BYTES
    async with _client(body, status=400) as client:
        with pytest.raises(BadRequest) as info:
            await client.read("Patient", "p")
    outcome = info.value.operation_outcome
    assert outcome is not None
    assert len(outcome.issues) == MAX_OUTCOME_ISSUES
    assert outcome.omitted == 20_000 - MAX_OUTCOME_ISSUES
    assert str(info.value).count("error/invalid") == SHOWN_ISSUES
    assert f"and {20_000 - SHOWN_ISSUES} more issue(s)" in str(info.value)
    assert len(str(info.value)) < 2000


async def test_an_outcome_over_the_error_limit_is_not_parsed() -> None:
    issues = b",".join([b'{"severity": "error", "code": "invalid"}'] * 1_000_000)  # ~40 MB
    body = b'{"resourceType": "OperationOutcome", "issue": [' + issues + b"]}"
    async with _client(body, status=400) as client:
        with pytest.raises(BadRequest, match=f"error body over {MAX_ERROR_BODY_BYTES} bytes") as info:
            await client.read("Patient", "p")
    assert info.value.operation_outcome is None
    assert len(str(info.value)) < 500


def test_outcome_parsing_keeps_a_bounded_number_of_issues() -> None:
    raw = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "x"}] * 5000}
    outcome = OperationOutcome.from_json(raw)
    assert outcome is not None
    assert (len(outcome.issues), outcome.omitted) == (MAX_OUTCOME_ISSUES, 5000 - MAX_OUTCOME_ISSUES)
    assert str(outcome).endswith(f"and {5000 - SHOWN_ISSUES} more issue(s)")
    small = OperationOutcome.from_json({"resourceType": "OperationOutcome", "issue": [{"code": "x"}] * 3})
    assert small is not None
    assert small.omitted == 0
    assert "more issue" not in str(small)
