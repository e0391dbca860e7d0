"""Malformed input for the pure parsers: every case ends in a correct result or the parser's typed error.

Hypothesis generates JSON-shaped garbage and near-misses (Bundles with odd links and entries, odd
OperationOutcomes, token responses missing fields, manifests, headers of every shape); hand-picked cases pin
the hard ones (hostile headers that a backtracking regex would take quadratic time on, tokens that cannot go in
a header).
"""

from __future__ import annotations

import email.utils
import json
import math
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from epic_fhir_async import EpicFHIRError, FHIRStatusError, TokenRequestError
from epic_fhir_async._bundle import Page, parse_page
from epic_fhir_async._headers import parse_retry_after, parse_www_authenticate
from epic_fhir_async._http import error_from_response
from epic_fhir_async._outcome import OperationOutcome
from epic_fhir_async.auth._token import AccessToken, parse_token_response
from epic_fhir_async.bulk._manifest import (
    BulkManifest,
    PollCadence,
    parse_manifest,
    parse_progress_percent,
    retry_after_delay,
)

FUZZ = settings(
    max_examples=80, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Keys the parsers look at, so generated objects hit the interesting branches instead of missing them all.
KEYS = st.sampled_from(
    ["resourceType", "entry", "link", "relation", "url", "resource", "search", "mode", "issue", "severity",
     "code", "details", "coding", "system", "diagnostics", "total", "id", "output", "error", "count", "type"]
)  # fmt: skip
near_json = st.recursive(
    scalars
    | st.sampled_from(["Bundle", "OperationOutcome", "next", "match", "outcome", "include", "Patient"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=25,
)


def _entry(resource: Any, mode: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"resource": resource}
    if mode is not None:
        entry["search"] = {"mode": mode}
    return entry


bundles = st.builds(
    lambda entries, links, total: {"resourceType": "Bundle", "entry": entries, "link": links, "total": total},
    st.lists(
        st.builds(_entry, near_json, st.sampled_from([None, "match", "outcome", "include", 3])) | near_json,
        max_size=5,
    )
    | near_json,
    st.lists(
        st.builds(
            lambda rel, url: {"relation": rel, "url": url},
            st.sampled_from(["next", "self", "previous", None]),
            scalars,
        )
        | near_json,
        max_size=4,
    )
    | near_json,
    scalars,
)


@FUZZ
@given(st.one_of(bundles, near_json))
def test_parse_page_gives_a_page_or_a_typed_error(bundle: Any) -> None:
    try:
        page = parse_page(bundle)
    except EpicFHIRError:
        return
    assert isinstance(page, Page)
    assert all(isinstance(r, dict) for r in page.resources + page.included)
    assert all(isinstance(o, OperationOutcome) for o in page.outcomes)
    assert page.next_url is None or (isinstance(page.next_url, str) and page.next_url)
    assert page.total is None or isinstance(page.total, int)


def test_hand_picked_bundles() -> None:
    patient = {"resourceType": "Patient", "id": "p"}
    repeated_next = parse_page(
        {
            "resourceType": "Bundle",
            "link": [{"relation": "next", "url": "a"}, {"relation": "next", "url": "b"}],
        }
    )
    assert repeated_next.next_url == "a"  # the first next link wins; a loop is caught by the pager
    no_resource = parse_page({"resourceType": "Bundle", "entry": [{"fullUrl": "x"}, {"resource": None}, 3]})
    assert no_resource.resources == []
    outcome_entry = {"resourceType": "OperationOutcome", "issue": "not a list"}
    mixed = parse_page(
        {"resourceType": "Bundle", "entry": [_entry(patient, None), _entry(outcome_entry, None)]}
    )
    assert mixed.resources == [patient]
    assert len(mixed.outcomes) == 1
    assert mixed.outcomes[0].issues == ()
    assert parse_page({"resourceType": "Bundle", "total": True}).total is None  # a bool is not a count
    wrong_shapes: list[Any] = [[], "Bundle", {"resourceType": "Patient"}, None, {"entry": []}]
    for wrong in wrong_shapes:
        with pytest.raises(EpicFHIRError, match="expected a FHIR Bundle"):
            parse_page(wrong)


@FUZZ
@given(near_json)
def test_operation_outcomes_of_any_shape(resource: Any) -> None:
    for candidate in (resource, {"resourceType": "OperationOutcome", "issue": resource}):
        outcome = OperationOutcome.from_json(candidate)
        if outcome is None:
            continue
        assert isinstance(str(outcome), str)
        assert isinstance(repr(outcome), str)
        assert outcome.primary is None or outcome.primary in outcome.issues
        assert all(isinstance(code, str) for code in outcome.epic_codes)
        assert all(isinstance(issue.message, str) for issue in outcome.issues)


http_dates = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(timezone.utc)
).map(lambda d: email.utils.format_datetime(d, usegmt=True))
retry_after_values = st.one_of(
    st.text(max_size=40),
    st.floats().map(str),
    st.integers().map(str),
    http_dates,
    http_dates.map(lambda d: d.replace("GMT", "+0500")),
    http_dates.map(lambda d: d[:-4]),  # no zone
    st.sampled_from(["", " ", "1e400", "-5", "nan", "inf", "0x10", "120 ", "Wed, 21 Oct 2015 07:28:00"]),
)


@FUZZ
@given(retry_after_values)
def test_retry_after_values_of_every_shape(value: str) -> None:
    seconds = parse_retry_after(value, now=1_750_000_000.0)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)
    cadence = PollCadence()
    delay = retry_after_delay(value, cadence, now=1_750_000_000.0)
    assert delay is None or cadence.min_delay <= delay <= cadence.max_retry_after


header_text = st.text(alphabet=st.sampled_from('aB9_-= ,"\\\t;:/.%') | st.characters(), max_size=80)


@FUZZ
@given(st.one_of(header_text, st.none()))
def test_www_authenticate_values_of_every_shape(value: str | None) -> None:
    params = parse_www_authenticate(value)
    assert all(isinstance(k, str) and k == k.lower() and isinstance(v, str) for k, v in params.items())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('Bearer error="invalid_token", error_description="The access token expired"',
         {"error": "invalid_token", "error_description": "The access token expired"}),
        ("Bearer error=insufficient_scope,scope=patient/*.read", {"error": "insufficient_scope", "scope": "patient/*.read"}),
        ('error="a\\"b"', {"error": 'a"b'}),
        ('Bearer realm="x", error="unterminated', {"realm": "x", "error": '"unterminated'}),
        ("Basic", {}),
        ("", {}),
    ],
)  # fmt: skip
def test_hand_picked_www_authenticate(value: str, expected: dict[str, str]) -> None:
    assert parse_www_authenticate(value) == expected


@pytest.mark.parametrize(
    "hostile",
    ["a" * 64_000, "Bearer " + "error" * 13_000, 'a="' * 20_000, "a " * 32_000, "-" * 64_000],
)
def test_hostile_www_authenticate_is_parsed_in_linear_time(hostile: str) -> None:
    # A match could start anywhere inside a run of token characters: a regex that backtracks on a long run
    # without "=" takes quadratic time (64 KB would take over a minute, past the test timeout). Milliseconds.
    assert isinstance(parse_www_authenticate(hostile), dict)


@pytest.mark.parametrize("hostile", ["1" * 64_000, "1." * 32_000, "1 " * 32_000, ("9" * 99 + ".") * 640])
def test_hostile_x_progress_is_parsed_in_linear_time(hostile: str) -> None:
    # The same quadratic backtracking threatens a run of digits without "%" (64 KB would take minutes).
    assert parse_progress_percent(hostile) is None


@FUZZ
@given(header_text)
def test_x_progress_of_every_shape(value: str) -> None:
    percent = parse_progress_percent(value)
    assert percent is None or 0.0 <= percent <= 100.0


token_responses = st.fixed_dictionaries(
    {},
    optional={
        "access_token": st.text(max_size=12) | scalars,
        "token_type": st.sampled_from(["bearer", "Bearer", "BEARER", "mac", "", " "]) | scalars,
        "expires_in": st.integers() | st.floats() | st.text(max_size=6) | scalars,
        "scope": st.text(max_size=20) | st.lists(scalars, max_size=3) | scalars,
        "refresh_token": scalars,
        "patient": scalars,
        "need_patient_banner": st.sampled_from(["true", "false", True, False]),
    },
)


@FUZZ
@given(st.one_of(token_responses, near_json))
def test_token_responses_of_every_shape(data: Any) -> None:
    try:
        token = parse_token_response(data, issued_at=100.0, wall_clock=lambda: 1_750_000_000.0)
    except TokenRequestError:
        return
    assert isinstance(token, AccessToken)
    assert token.value.isascii()
    assert token.value.isprintable()
    assert " " not in token.value
    assert math.isfinite(token.expires_at) or token.expires_at == math.inf
    assert token.expires_at >= token.issued_at  # type: ignore[operator]
    if len(token.value) >= 8:  # shorter values occur by chance in the repr's numbers
        assert token.value not in repr(token)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({}, "without an access_token"),
        ({"access_token": ""}, "without an access_token"),
        ({"access_token": 42}, "without an access_token"),
        ({"access_token": "abc\r\nX-Injected: 1"}, "cannot go in a header"),
        ({"access_token": "tökén"}, "cannot go in a header"),
        ({"access_token": "a b"}, "cannot go in a header"),
        ([], "without a JSON object"),
    ],
)
def test_hand_picked_token_responses(data: Any, match: str) -> None:
    with pytest.raises(TokenRequestError, match=match):
        parse_token_response(data, issued_at=0.0)


def test_token_response_missing_optional_fields_gets_defaults() -> None:
    token = parse_token_response({"access_token": " tok "}, issued_at=10.0)
    assert (token.value, token.token_type, token.scopes, token.lifetime) == (
        "tok",
        "Bearer",
        frozenset(),
        3600.0,
    )
    odd = parse_token_response({"access_token": "t", "expires_in": "nan", "token_type": None}, issued_at=0.0)
    assert odd.lifetime == 3600.0


manifests = st.fixed_dictionaries(
    {},
    optional={
        "transactionTime": scalars,
        "request": scalars,
        "requiresAccessToken": scalars,
        "output": st.lists(
            st.fixed_dictionaries({}, optional={"type": scalars, "url": scalars, "count": scalars})
            | near_json,
            max_size=3,
        )
        | scalars,
        "error": st.lists(st.fixed_dictionaries({"url": st.text(max_size=10)}), max_size=2) | scalars,
        "link": st.lists(st.fixed_dictionaries({"relation": st.just("next"), "url": scalars}), max_size=2),
    },
)


@FUZZ
@given(st.one_of(manifests, near_json))
def test_manifests_of_every_shape(data: Any) -> None:
    try:
        manifest, next_url = parse_manifest(data)
    except ValueError:  # the job turns it into BulkExportError (tests/errors/test_any_server_answer.py)
        return
    assert isinstance(manifest, BulkManifest)
    assert next_url is None or isinstance(next_url, str)
    assert all(isinstance(f.url, str) for f in manifest.outputs + manifest.errors + manifest.deleted)
    assert all(f.count is None or isinstance(f.count, int) for f in manifest.outputs)
    assert isinstance(manifest.to_json(), dict)


statuses = st.sampled_from([400, 401, 403, 404, 405, 409, 410, 412, 422, 429, 500, 502, 503, 504, 418, 599])
content_types = st.sampled_from(
    ["application/fhir+json", "application/json; charset=utf-8", "text/html", "application/xml", "", "x/y"]
)
bodies = st.one_of(
    st.binary(max_size=60),
    near_json.map(lambda v: json.dumps(v).encode()),
    st.just(b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", "diagnostics": 5}]}'),
)


@FUZZ
@given(
    statuses,
    content_types,
    bodies,
    st.one_of(st.none(), header_text),
    st.one_of(st.none(), retry_after_values),
)
def test_error_responses_of_every_shape(
    status: int, content_type: str, body: bytes, challenge: str | None, retry_after: str | None
) -> None:
    headers = {"content-type": content_type}
    if challenge is not None and challenge.isascii():
        headers["www-authenticate"] = challenge
    if retry_after is not None and retry_after.isascii():
        headers["retry-after"] = retry_after
    request = httpx.Request("GET", "https://fhir.example.org/R4/Patient?name=secret")
    error = error_from_response(httpx.Response(status, headers=headers, content=body, request=request))
    assert isinstance(error, FHIRStatusError)
    assert error.status_code == status
    assert "secret" not in str(error)
    assert "secret" not in repr(error)
