"""Pure parts of the bulk client: manifest parsing, poll cadence, Retry-After caps, NDJSON splitting."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epic_fhir_async._outcome import OperationOutcome
from epic_fhir_async.bulk._manifest import (
    BulkManifest,
    PollCadence,
    is_too_recent,
    kickoff_parameters,
    kickoff_query,
    parse_manifest,
    parse_progress_percent,
    retry_after_delay,
)
from epic_fhir_async.bulk._ndjson import BOM, NDJSONError, NDJSONSplitter

NOW = 1_750_000_000.0


def test_parse_manifest_full_and_lenient() -> None:
    manifest, next_url = parse_manifest(
        {
            "transactionTime": "2026-01-01T00:00:00Z",
            "request": "https://x/Group/g/$export?_type=Patient",
            "requiresAccessToken": True,
            "output": [
                {"type": "Patient", "url": "https://x/f/1", "count": 3},
                {"type": "Patient", "url": "https://x/f/2", "count": True},  # not a count
            ],
            "error": [{"type": "OperationOutcome", "url": "https://x/f/e"}],
            "deleted": [{"type": "Bundle", "url": "https://x/f/d"}],
            "extension": {"https://example/ext": 1},
            "link": [{"relation": "self", "url": "a"}, {"relation": "next", "url": "https://x/m?page=2"}],
        }
    )
    assert next_url == "https://x/m?page=2"
    assert manifest.transaction_time == "2026-01-01T00:00:00Z"
    assert [f.count for f in manifest.outputs] == [3, None]
    assert manifest.expected_counts() == {"Patient": 3}
    assert manifest.errors[0].type == "OperationOutcome"
    assert manifest.deleted[0].url == "https://x/f/d"
    assert manifest.extension == {"https://example/ext": 1}
    again, _ = parse_manifest(manifest.to_json())
    assert again == manifest
    minimal, none = parse_manifest({})
    assert none is None
    assert minimal.outputs == ()
    assert minimal.requires_access_token is True
    assert parse_manifest({"requiresAccessToken": False})[0].requires_access_token is False


@pytest.mark.parametrize("bad", [[], "x", {"output": {}}, {"output": [{"type": "Patient"}]}])
def test_parse_manifest_rejects_bad_shapes(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_manifest(bad)


def test_merged_manifest_pages() -> None:
    a, _ = parse_manifest({"transactionTime": "t", "output": [{"type": "A", "url": "u1", "count": 1}]})
    b, _ = parse_manifest({"output": [{"type": "B", "url": "u2", "count": 2}], "error": [{"url": "e"}]})
    merged = a.merged(b)
    assert isinstance(merged, BulkManifest)
    assert [f.url for f in merged.outputs] == ["u1", "u2"]
    assert merged.transaction_time == "t"
    assert merged.outputs_of(["B"])[0].count == 2
    assert len(merged.errors) == 1


def test_cadence_backoff_doubles_up_to_the_maximum() -> None:
    cadence = PollCadence(initial=2.0, maximum=600.0)
    delays = [cadence.backoff(n) for n in range(12)]
    assert delays[:4] == [2.0, 4.0, 8.0, 16.0]
    assert delays[-1] == 600.0
    assert max(delays) == 600.0
    assert cadence.backoff(10_000) == 600.0  # no overflow on multi-week waits
    with pytest.raises(ValueError):
        PollCadence(initial=5.0, maximum=1.0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("soon", None),
        ("120", 120.0),
        ("0", 0.5),  # floor: never hammer the server
        ("86400", None),  # over the cap: never slept on, the cadence applies
        (str(int(NOW + 30)), 30.0),  # an epoch timestamp in the near future: honoured as an instant
        (str(int(NOW + 86400)), None),  # an epoch far away: ignored (cadence instead)
        (str(int(NOW - 10)), 0.5),  # an epoch in the past: poll at the floor, as for a past date
        (str(int((NOW + 30) * 1000)), 30.0),  # epoch milliseconds: the same instant
        ("Sun, 15 Jun 2025 15:15:00 GMT", 500.0),  # HTTP-date, 500 s after NOW
        ("Wed, 01 Jan 2020 00:00:00 GMT", 0.5),  # a date in the past: poll at the floor
    ],
)
def test_retry_after_delay_caps(header: str | None, expected: float | None) -> None:
    assert retry_after_delay(header, PollCadence(), now=NOW) == expected


def test_progress_percent() -> None:
    assert parse_progress_percent("Processing: 40%") == 40.0
    assert parse_progress_percent("12.5 % done") == 12.5
    assert parse_progress_percent("250%") == 100.0
    assert parse_progress_percent("in progress") is None
    assert parse_progress_percent(None) is None


def test_too_recent_detection() -> None:
    text = "Error processing Bulk Data Kickoff request: Request not allowed: The Client requested this Group too recently."
    outcome = OperationOutcome.from_json(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "fatal", "code": "throttled", "diagnostics": text}],
        }
    )
    assert is_too_recent(outcome)
    other = OperationOutcome.from_json(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "fatal", "code": "x", "diagnostics": "nope"}],
        }
    )
    assert not is_too_recent(other)
    assert not is_too_recent(None)


def test_kickoff_query_and_parameters() -> None:
    query = kickoff_query(
        types=["Patient", "Observation"],
        type_filters=["Observation?category=laboratory,vital-signs&status=final"],
        since="2024-01-01T00:00:00+00:00",
        output_format=None,
        extra={"patient": "Patient/1"},
    )
    assert query.split("&") == [
        "_type=Patient,Observation",
        "_typeFilter=Observation%3Fcategory%3Dlaboratory%2Cvital-signs%26status%3Dfinal",
        "_since=2024-01-01T00%3A00%3A00%2B00%3A00",
        "patient=Patient%2F1",
    ]
    assert kickoff_query(types=None, type_filters=None, since=None, output_format=None) == ""
    body = kickoff_parameters(
        types=["Patient"],
        type_filters=["Observation?code=1,2"],
        since=None,
        output_format="application/fhir+ndjson",
    )
    assert body["resourceType"] == "Parameters"
    assert [p["name"] for p in body["parameter"]] == ["_type", "_typeFilter", "_outputFormat"]
    assert body["parameter"][1]["valueString"] == "Observation?code=1,2"


# ------------------------------------------------------------------------------------------- NDJSON


def split_all(chunks: list[bytes]) -> list[Any]:
    splitter = NDJSONSplitter()
    out: list[Any] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    out.extend(splitter.finish())
    return out


def test_ndjson_edge_cases() -> None:
    assert split_all([b'{"a":1}\r\n{"a":2}\r\n']) == [{"a": 1}, {"a": 2}]  # CRLF
    assert split_all([b'{"a":1}\n{"a":2}']) == [{"a": 1}, {"a": 2}]  # last line without newline
    assert split_all([b'\n\n{"a":1}\n  \n\r\n{"a":2}\n\n']) == [{"a": 1}, {"a": 2}]  # blank lines
    assert split_all([BOM + b'{"a":1}\n']) == [{"a": 1}]  # byte-order mark
    assert split_all([b"\xef", b"\xbb", b'\xbf{"a":', b"1}"]) == [{"a": 1}]  # BOM split across chunks
    assert split_all([b"\xef\xbb\xbf"]) == []
    assert split_all([b"", b""]) == []
    assert split_all([b'{"a":"\xc3\xa9"}\n']) == [{"a": "é"}]
    with pytest.raises(NDJSONError) as info:
        split_all([b'{"a":1}\n{"patient": "secret\n'])
    assert info.value.line == 2
    assert "secret" not in str(info.value)


def test_ndjson_counts_lines_without_parsing() -> None:
    splitter = NDJSONSplitter(parse=False)
    splitter.feed(b'{"a":1}\n\n{"a"')
    splitter.feed(b":2}\r\n")
    splitter.finish()
    assert splitter.lines == 2


resources = st.lists(
    st.dictionaries(
        st.text(max_size=5),
        st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=20)),
        max_size=4,
    ),
    max_size=20,
)


@given(resources, st.lists(st.integers(min_value=0, max_value=60), max_size=30), st.booleans(), st.booleans())
def test_ndjson_any_chunking_gives_the_same_values(
    values: list[dict[str, Any]], cuts: list[int], crlf: bool, bom: bool
) -> None:
    eol = b"\r\n" if crlf else b"\n"
    data = (BOM if bom else b"") + b"".join(json.dumps(v).encode() + eol for v in values)
    if values and cuts and cuts[0] % 2:
        data = data[: -len(eol)]  # sometimes no newline after the last line
    points = sorted({min(c * 7, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert split_all(chunks) == values
