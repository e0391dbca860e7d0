"""Ids in URL paths and OperationOutcome diagnostics stay out of messages, reprs and logs."""

from __future__ import annotations

import logging

import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, NotFound, RetryPolicy, ServerError, TransportError, UnsafeURLError
from epic_fhir_async._outcome import OperationOutcome, outcome_summary
from epic_fhir_async._urls import redact_url
from tests.conftest import BASE, CAMILA, JSON_CT, Recorder

pytestmark = pytest.mark.anyio

EPIC_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"
SECRET_DIAGNOSTICS = "Patient LOPEZ, CAMILA MARIA (MRN 203713) has no such record"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"{BASE}/Patient/{CAMILA}", f"{BASE}/Patient/***"),
        (f"{BASE}/Patient/{CAMILA}?_format=json#x", f"{BASE}/Patient/***"),
        (f"{BASE}/Patient/{CAMILA}/$everything", f"{BASE}/Patient/***/$everything"),
        (f"{BASE}/Observation/o1/_history/2", f"{BASE}/Observation/***/_history/***"),
        (f"{BASE}/Patient/{CAMILA}/Observation", f"{BASE}/Patient/***/Observation"),
        (f"{BASE}/Group/e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83/$export", f"{BASE}/Group/***/$export"),
        (f"{BASE}/BulkRequest/JOB-1/eNZwsy9bU7LX8nBB.RJXkpA3", f"{BASE}/BulkRequest/***/***"),
        (f"{BASE}/Patient/$match", f"{BASE}/Patient/$match"),
        (f"{BASE}/Observation/_search", f"{BASE}/Observation/_search"),
        (f"{BASE}/Observation?patient={CAMILA}", f"{BASE}/Observation"),
        (f"{BASE}/metadata", f"{BASE}/metadata"),
        (
            "https://files.example/exports/0b0e6f53-4a4e-4a76-a5d2-3d2a4f1f3b8a",
            "https://files.example/exports/***",
        ),
        ("https://user:pw@h.example:8443/a/b?x=1", "https://h.example:8443/a/b"),
        (f"Binary/{CAMILA}", "Binary/***"),
    ],
)
def test_redact_url_masks_ids_and_keeps_the_shape(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert redact_url(expected) == expected  # idempotent: redacting twice changes nothing


def _outcome(diagnostics: str, *, status: int = 404) -> httpx.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "fatal",
                "code": "not-found",
                "details": {
                    "coding": [{"system": EPIC_SYSTEM, "code": "59008"}],
                    "text": "The FHIR ID provided was not found.",
                },
                "diagnostics": diagnostics,
            }
        ],
    }
    return httpx.Response(status, json=body, headers=JSON_CT)


async def test_status_error_hides_id_and_diagnostics_but_keeps_them_on_the_object() -> None:
    recorder = Recorder(lambda request: _outcome(SECRET_DIAGNOSTICS))
    async with recorder.client() as client:
        with pytest.raises(NotFound) as info:
            await client.read("Patient", CAMILA)
    err = info.value
    for text in (str(err), repr(err), str(err.args)):
        assert CAMILA not in text
        assert "LOPEZ" not in text
        assert "203713" not in text
    assert "Patient/***" in str(err)
    assert "fatal/not-found [59008] The FHIR ID provided was not found." in str(err)
    assert "diagnostics withheld" in str(err)
    assert err.issues[0].diagnostics == SECRET_DIAGNOSTICS  # still there for the caller
    assert err.operation_outcome is not None
    assert err.operation_outcome.epic_codes == ("59008",)


async def test_sandbox_not_found_names_no_id(sandbox_client: EpicFHIRClient) -> None:
    unknown = "eDoesNotExist0000000000000001"
    async with sandbox_client as client:
        with pytest.raises(NotFound) as info:
            await client.read("Patient", unknown)
    assert unknown not in str(info.value)
    assert unknown not in repr(info.value)
    assert info.value.url.endswith("/Patient/***")
    assert info.value.issues
    assert info.value.issues[0].epic_code == "59008"


def test_outcome_summary_keeps_only_codes_for_non_epic_issues() -> None:
    outcome = OperationOutcome.from_json(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "details": {"text": f"bad id {CAMILA}"}}],
        }
    )
    assert outcome is not None
    assert outcome_summary(outcome) == "error/invalid"


async def test_retry_debug_log_masks_the_id(caplog: pytest.LogCaptureFixture) -> None:
    calls = iter([httpx.Response(503), _outcome("x", status=503)])
    recorder = Recorder(lambda request: next(calls))
    caplog.set_level(logging.DEBUG, logger="epic_fhir_async")
    async with recorder.client(retry=RetryPolicy(max_attempts=2, backoff_base=0.0, jitter=0.0)) as client:
        with pytest.raises(ServerError) as info:
            await client.read("Patient", CAMILA)
    assert len(recorder.requests) == 2
    retry_lines = [r.getMessage() for r in caplog.records if r.name.startswith("epic_fhir_async")]
    assert any("Patient/***" in line for line in retry_lines), retry_lines
    assert not any(CAMILA in line for line in retry_lines)
    assert CAMILA not in str(info.value)


async def test_transport_error_and_unsafe_redirect_mask_ids() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with Recorder(refuse).client() as client:
        with pytest.raises(TransportError) as info:
            await client.read("Patient", CAMILA)
    assert CAMILA not in str(info.value)
    assert CAMILA not in str(info.value.url)

    def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": f"https://evil.example/Patient/{CAMILA}"})

    async with Recorder(redirect).client() as client:
        with pytest.raises(UnsafeURLError) as unsafe:
            await client.read("Patient", CAMILA)
    assert CAMILA not in str(unsafe.value)
    assert "https://evil.example/Patient/***" in str(unsafe.value)
