"""NDJSON as servers really send it: any chunking, CRLF, blank lines, a BOM, a truncated last line, garbage."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from epic_fhir_async import ResponseTooLarge
from epic_fhir_async.bulk._ndjson import BOM, NDJSONError, NDJSONSplitter

FUZZ = settings(
    max_examples=80, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
)

resources = st.lists(
    st.fixed_dictionaries(
        {"resourceType": st.sampled_from(["Patient", "Observation"]), "id": st.text(min_size=1, max_size=8)},
        optional={
            "note": st.text(max_size=30),
            # What JSON (and orjson) can carry: 64-bit integers, finite floats.
            "value": st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False),
        },
    ),
    max_size=8,
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _feed(chunks: list[bytes], *, parse: bool = True, max_line: int = 1 << 20) -> list[Any]:
    splitter = NDJSONSplitter(parse=parse, max_line=max_line)
    out: list[Any] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out + splitter.finish()


@FUZZ
@given(
    resources,
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
    st.booleans(),
    st.lists(st.integers(min_value=0), max_size=12),
    st.lists(st.sampled_from([b"", b"\n", b"\r\n", b"  \n", b"\t\r\n"]), max_size=4),
)
def test_any_chunking_of_tidy_and_untidy_files_gives_every_resource_once(
    values: list[dict[str, Any]],
    newline: bytes,
    bom: bool,
    final_newline: bool,
    cuts: list[int],
    blanks: list[bytes],
) -> None:
    lines = [json.dumps(v, ensure_ascii=False).encode() for v in values]
    body = newline.join(lines) + (newline if final_newline and lines else b"")
    if blanks and lines:  # blank lines in the middle and at the end
        body = (
            lines[0] + newline + b"".join(blanks) + newline.join(lines[1:]) + (newline if lines[1:] else b"")
        )
        body += b"".join(blanks)
    data = (BOM if bom else b"") + body
    chunks = _split(data, cuts)
    assert _feed(chunks) == values
    raw = _feed(chunks, parse=False)
    assert len(raw) == len(values)


@FUZZ
@given(resources.filter(bool), st.integers(min_value=1), st.lists(st.integers(min_value=0), max_size=6))
def test_a_truncated_last_line_is_an_error_never_a_silent_loss(
    values: list[dict[str, Any]], cut: int, cuts: list[int]
) -> None:
    lines = [json.dumps(v).encode() for v in values]
    last = lines[-1]
    kept = 1 + cut % (len(last) - 1)  # at least one byte of the last line, never all of it
    data = b"\n".join([*lines[:-1], last[:kept]])
    with pytest.raises(NDJSONError, match=f"line {len(values)} "):
        _feed(_split(data, cuts))


@FUZZ
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=6), st.booleans())
def test_garbage_gives_values_or_ndjson_error(data: bytes, cuts: list[int], parse: bool) -> None:
    try:
        out = _feed(_split(data, cuts), parse=parse)
    except NDJSONError as exc:
        line = exc.line
        out = []
    else:
        line = 1
    assert isinstance(out, list)
    assert line >= 1


def test_hand_picked_shapes() -> None:
    patient = {"resourceType": "Patient", "id": "p"}
    line = json.dumps(patient).encode()
    assert _feed([BOM + line + b"\r\n\r\n" + line]) == [patient, patient]
    assert _feed([BOM[:1], BOM[1:2], BOM[2:] + line]) == [patient]  # a BOM split across chunks
    assert _feed([b"\n\n  \n"]) == []
    assert _feed([]) == []
    with pytest.raises(NDJSONError, match="line 2 "):
        _feed([line + b"\nnot json\n" + line])
    with pytest.raises(NDJSONError):
        _feed([b"\xff\xfe{}\n"])  # UTF-16 BOM / invalid UTF-8


def test_an_endless_line_is_refused_before_it_fills_memory() -> None:
    splitter = NDJSONSplitter(max_line=1000)
    splitter.feed(b'{"ok": 1}\n{"a": "')
    for _ in range(9):
        splitter.feed(b"x" * 100)  # never a newline: 995 bytes pending
    with pytest.raises(ResponseTooLarge, match=r"line 2 .* longer than 1000 bytes") as info:
        splitter.feed(b"x" * 100)
    assert info.value.limit == 1000
    assert _feed([b"x" * 999 + b"\n"], parse=False, max_line=1000) == [b"x" * 999]  # at the limit: fine
