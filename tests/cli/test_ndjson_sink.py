"""The CLI's crash-safe NDJSON sink: commit per completed stream, journal, truncate on resume, rename at end."""

from __future__ import annotations

from pathlib import Path

import pytest

from epic_fhir_async import _json
from epic_fhir_async.cli._pull_sink import STATE_DIR, NDJSONSink, OutputStateError
from epic_fhir_async.pull._values import PullItem

pytestmark = pytest.mark.anyio


def item(pid: str, query: str, n: int, rtype: str = "Condition") -> PullItem:
    return PullItem(pid, query, {"resourceType": rtype, "id": f"{pid}-{n}", "pad": "x" * 50})


def ids(path: Path) -> list[str]:
    return [_json.loads(line)["id"] for line in path.read_bytes().splitlines()]


async def test_crash_then_resume_keeps_exactly_the_completed_streams(tmp_path: Path) -> None:
    sink = NDJSONSink(tmp_path)
    await sink.open(resume=False)
    for n in range(3):
        await sink.add(item("a", "Condition", n))
        await sink.add(item("b", "Condition", n))
    await sink.mark_complete("a", "Condition")
    await sink.aclose()  # crash: b never completed
    part = tmp_path / "Condition.ndjson.part"
    assert ids(part) == ["a-0", "a-1", "a-2"]
    with part.open("ab") as f:  # a crash in the middle of appending another stream
        f.write(b'{"resourceType":"Condition","id":"b-0"}\n{"resourceType":"Cond')
    with (tmp_path / STATE_DIR / "journal.ndjson").open("ab") as f:
        f.write(b'{"p":"b","q":"Condition","o":{"Condition":9')  # torn journal line
    assert not (tmp_path / "Condition.ndjson").exists()  # no final file before the end

    with pytest.raises(OutputStateError, match="--resume"):
        await NDJSONSink(tmp_path).open(resume=False)

    sink = NDJSONSink(tmp_path)
    await sink.open(resume=True)
    assert sink.resumed_streams == 1
    assert sink.is_complete("a", "Condition")
    assert not sink.is_complete("b", "Condition")
    assert ids(part) == ["a-0", "a-1", "a-2"]
    for n in range(3):
        await sink.add(item("b", "Condition", n))
    await sink.mark_complete("b", "Condition")
    files = await sink.finish(keep_state=False)
    assert ids(files["Condition"]) == ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]
    assert not part.exists()
    assert not (tmp_path / STATE_DIR).exists()
    assert sink.counts == {"Condition": 3}


async def test_big_streams_spill_and_types_get_their_own_files(tmp_path: Path) -> None:
    sink = NDJSONSink(tmp_path, spill_bytes=200)
    await sink.open(resume=False)
    for n in range(20):
        await sink.add(item("a", "Observation?category=laboratory", n, rtype="Observation"))
    await sink.add(item("a", "Patient", 0, rtype="Patient"))
    assert list((tmp_path / STATE_DIR).glob("spool-*"))  # spilled to disk, not kept in memory
    await sink.mark_failed("a", "Patient")
    await sink.mark_complete("a", "Observation?category=laboratory")
    files = await sink.finish(keep_state=False)
    assert sorted(files) == ["Observation"]
    assert ids(files["Observation"]) == [f"a-{n}" for n in range(20)]
    assert sink.counts == {"Observation": 20}


async def test_finished_with_failures_can_resume_the_failed_streams(tmp_path: Path) -> None:
    sink = NDJSONSink(tmp_path)
    await sink.open(resume=False)
    await sink.add(item("a", "Condition", 0))
    await sink.mark_complete("a", "Condition")
    await sink.add(item("b", "Condition", 0))
    await sink.mark_failed("b", "Condition")
    files = await sink.finish(keep_state=True)
    assert ids(files["Condition"]) == ["a-0"]

    sink = NDJSONSink(tmp_path)
    await sink.open(resume=True)
    assert sink.is_complete("a", "Condition")
    assert not sink.is_complete("b", "Condition")
    await sink.add(item("b", "Condition", 0))
    await sink.mark_complete("b", "Condition")
    files = await sink.finish(keep_state=False)
    assert ids(files["Condition"]) == ["a-0", "b-0"]
