"""The pull's crash-safe NDJSON sink (``epic-fhir pull`` and each fleet shard write with it): commit per
completed stream, journal, truncate on resume, rename at end."""

from __future__ import annotations

from pathlib import Path

import pytest

from epic_fhir_async import ConfigurationError, _json
from epic_fhir_async.pull import NDJSONSink, PullItem

STATE_DIR = NDJSONSink.STATE_DIR

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

    with pytest.raises(ConfigurationError, match="holds an interrupted pull: open it with resume=True"):
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


async def test_a_journal_of_an_earlier_version_without_counts_resumes(tmp_path: Path) -> None:
    # What `epic-fhir pull` journalled before the writer was shared with the fleet: no "n" (counts) per stream.
    (tmp_path / STATE_DIR).mkdir()
    line = b'{"resourceType":"Condition","id":"a-0"}\n'
    (tmp_path / "Condition.ndjson.part").write_bytes(line)
    (tmp_path / STATE_DIR / "journal.ndjson").write_bytes(
        b'{"version":1}\n{"p":"a","q":"Condition","o":{"Condition":%d}}\n' % len(line)
    )
    sink = NDJSONSink(tmp_path)
    await sink.open(resume=True)
    assert sink.is_complete("a", "Condition")
    await sink.add(item("b", "Condition", 0))
    await sink.mark_complete("b", "Condition")
    assert sink.counts == {"Condition": 1}  # this run's
    files = await sink.finish(keep_state=False)
    assert ids(files["Condition"]) == ["a-0", "b-0"]


async def test_total_counts_add_the_earlier_runs_from_the_journal(tmp_path: Path) -> None:
    sink = NDJSONSink(tmp_path)
    await sink.open(resume=False)
    for n in range(2):
        await sink.add(item("a", "Condition", n))
    await sink.mark_complete("a", "Condition")
    await sink.aclose()

    again = NDJSONSink(tmp_path)
    await again.open(resume=True)
    await again.add(item("b", "Condition", 0))
    await again.add(item("b", "Patient", 0, rtype="Patient"))
    await again.mark_complete("b", "Condition")
    await again.mark_complete("b", "Patient")
    assert again.counts == {"Condition": 1, "Patient": 1}
    assert again.total_counts == {"Condition": 3, "Patient": 1}
    await again.aclose()


async def test_state_kept_beside_the_files_is_removed_without_touching_them(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    sink = NDJSONSink(tmp_path, state_dir=tmp_path, lock=True)
    await sink.open(resume=False)
    await sink.add(item("a", "Condition", 0))
    await sink.mark_complete("a", "Condition")
    files = await sink.finish(keep_state=False)
    assert ids(files["Condition"]) == ["a-0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Condition.ndjson", "notes.txt"]


def test_spill_bytes_must_be_a_positive_number_of_bytes(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="spill_bytes=0"):
        NDJSONSink(tmp_path, spill_bytes=0)
