"""Typed errors built from responses: status classes, OperationOutcome issues, empty 401/403, redaction."""

from __future__ import annotations

import httpx
import pytest

from epic_fhir_async import (
    BadRequest,
    EpicFHIRError,
    FHIRStatusError,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
)
from epic_fhir_async._headers import parse_www_authenticate
from epic_fhir_async._http import error_from_response
from epic_fhir_async._urls import redact_url

EPIC_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"
SECRET_QUERY = "patient=erXuFYUfucBZaryVksYEcMg3"


def _response(
    status: int, *, json: object = None, content: bytes = b"", headers: dict[str, str] | None = None
) -> httpx.Response:
    request = httpx.Request(
        "GET",
        f"https://fhir.example.org/api/FHIR/R4/Observation?{SECRET_QUERY}",
        headers={"Authorization": "Bearer SECRET-TOKEN-VALUE"},
    )
    if json is not None:
        resp = httpx.Response(status, json=json, request=request, headers=headers)
        resp.headers["content-type"] = "application/fhir+json; charset=utf-8"
        return resp
    return httpx.Response(status, content=content, request=request, headers=headers)


def _issue(
    severity: str, code: str, epic: str, text: str, diagnostics: str | None = None
) -> dict[str, object]:
    issue: dict[str, object] = {
        "severity": severity,
        "code": code,
        "details": {"coding": [{"system": EPIC_SYSTEM, "code": epic, "display": text}], "text": text},
    }
    if diagnostics:
        issue["diagnostics"] = diagnostics
    return issue


def test_400_keeps_every_issue_and_epic_codes() -> None:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            _issue(
                "information",
                "invalid",
                "59100",
                "Unknown parameter",
                "Unknown parameter: FOO. Parameter has been ignored.",
            ),
            _issue("fatal", "required", "59108", "Required element missing", "category or code is required"),
        ],
    }
    err = error_from_response(_response(400, json=body))
    assert isinstance(err, BadRequest)
    assert err.status_code == 400
    assert err.operation_outcome is not None
    assert err.operation_outcome.epic_codes == ("59100", "59108")
    assert err.operation_outcome.primary is not None
    assert err.operation_outcome.primary.epic_code == "59108"
    assert "59108" in str(err)
    assert "Required element missing" in str(err)  # Epic's code text stays in the message
    # Diagnostics can hold patient data: on the error object only, never in str().
    assert "category or code is required" not in str(err)
    assert err.issues[1].diagnostics == "category or code is required"
    assert err.url == "https://fhir.example.org/api/FHIR/R4/Observation"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (410, NotFound),
        (429, RateLimited),
        (500, ServerError),
        (503, ServerError),
        (418, FHIRStatusError),
    ],
)
def test_status_maps_to_class(status: int, cls: type[FHIRStatusError]) -> None:
    err = error_from_response(_response(status))
    assert type(err) is cls
    assert isinstance(err, EpicFHIRError)


def test_empty_401_explained_from_www_authenticate() -> None:
    header = 'Bearer error="invalid_token", error_description="The access token provided is not valid"'
    err = error_from_response(_response(401, headers={"WWW-Authenticate": header}))
    assert isinstance(err, Unauthorized)
    assert err.operation_outcome is None
    assert err.www_authenticate["error"] == "invalid_token"
    assert "invalid_token" in str(err)


def test_empty_403_insufficient_scope_hints_at_incoming_api() -> None:
    header = 'Bearer error="insufficient_scope", error_description="The access token provided is valid, but is not authorized for this service"'
    err = error_from_response(_response(403, headers={"WWW-Authenticate": header}))
    assert isinstance(err, Forbidden)
    assert "insufficient_scope" in str(err)
    assert "Incoming API" in str(err)


def test_rate_limited_carries_retry_after() -> None:
    err = error_from_response(_response(429, headers={"Retry-After": "7"}))
    assert isinstance(err, RateLimited)
    assert err.retry_after == 7.0


def test_no_token_header_or_query_in_str_or_repr() -> None:
    for status in (400, 401, 403, 404, 429, 500):
        err = error_from_response(
            _response(status, content=b"<html>oops</html>", headers={"Content-Type": "text/html"})
        )
        for text in (str(err), repr(err)):
            assert "SECRET-TOKEN-VALUE" not in text
            assert SECRET_QUERY not in text
            assert "erXuFYUfucBZaryVksYEcMg3" not in text


def test_html_body_is_described_not_dumped() -> None:
    err = error_from_response(
        _response(
            404,
            content=b"<html><title>404 - File or directory not found.</title></html>",
            headers={"Content-Type": "text/html; charset=iso-8859-1"},
        )
    )
    assert "text/html" in str(err)
    assert "<html>" not in str(err)


def test_malformed_json_body_does_not_crash() -> None:
    resp = _response(500, content=b"{not json", headers={"Content-Type": "application/json"})
    err = error_from_response(resp)
    assert isinstance(err, ServerError)
    assert err.operation_outcome is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            'Bearer error="invalid_token", error_description="The access token provided is not valid"',
            {"error": "invalid_token", "error_description": "The access token provided is not valid"},
        ),
        ('Bearer realm="x",error=insufficient_scope', {"realm": "x", "error": "insufficient_scope"}),
        ('error="invalid_token"', {"error": "invalid_token"}),
        ('Bearer error="a \\"quoted\\" word"', {"error": 'a "quoted" word'}),
        ("Bearer", {}),
        ("", {}),
        (None, {}),
    ],
)
def test_parse_www_authenticate(value: str | None, expected: dict[str, str]) -> None:
    assert parse_www_authenticate(value) == expected


def test_redact_url_drops_query_fragment_and_userinfo() -> None:
    assert redact_url("https://user:pw@h.example:8443/a/b?x=1#frag") == "https://h.example:8443/a/b"
    assert redact_url(httpx.URL("http://127.0.0.1/p?q")) == "http://127.0.0.1/p"
