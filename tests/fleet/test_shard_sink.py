"""One shard's output in this process (no Dask): a run that died mid-commit resumes without losing or
repeating a line, a finished shard is not fetched again, and the driver's merge keeps shard order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from epic_fhir_async.fleet import ClientSpec, TokenEnvAuth
from epic_fhir_async.fleet._sink import ShardSink, merge_shards, read_outcome, shard_dir
from epic_fhir_async.fleet._worker import JobSpec, close_job, run_shard
from epic_fhir_async.pull import PullItem

from .conftest import TYPES, Served, assert_exact, truth


def item(patient: str, query: str, rid: str, rtype: str = "Condition") -> PullItem:
    return PullItem(patient, query, {"resourceType": rtype, "id": rid})


def lines(path: Path) -> list[str]:
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


@pytest.mark.anyio
async def test_a_shard_that_died_mid_commit_resumes_without_loss_or_repeat(tmp_path: Path) -> None:
    directory = tmp_path / "shard"
    first = ShardSink(directory)
    assert await first.open(retry_failed=False) is None
    await first.add(item("p1", "Condition", "c1"))
    await first.add(item("p1", "Condition", "c2"))
    await first.mark_complete("p1", "Condition")
    await first.add(item("p2", "Condition", "c3"))  # p2's stream never completes: the worker dies
    await first.aclose()
    # The death happened while p2's lines were being appended: the part file is longer than the journal says,
    # and the journal's last line is torn.
    with (directory / "Condition.ndjson.part").open("ab") as f:
        f.write(b'{"resourceType":"Condition","id":"c3"}\n{"resourceType":"Cond')
    with (directory / "journal.ndjson").open("ab") as f:
        f.write(b'{"p":"p2","q":"Condition","o":{"Condi')

    again = ShardSink(directory)
    assert await again.open(retry_failed=False) is None
    assert again.is_complete("p1", "Condition")
    assert not again.is_complete("p2", "Condition")
    assert again.counts == {"Condition": 2}
    await again.add(item("p2", "Condition", "c3"))
    await again.mark_complete("p2", "Condition")
    outcome = await again.finish([])

    assert lines(directory / "Condition.ndjson.part") == ["c1", "c2", "c3"]
    assert outcome.counts == {"Condition": 3}
    assert outcome.streams == 2


@pytest.mark.anyio
async def test_a_finished_shard_is_returned_as_it_was_unless_its_failures_are_retried(tmp_path: Path) -> None:
    directory = tmp_path / "shard"
    sink = ShardSink(directory)
    await sink.open(retry_failed=False)
    await sink.add(item("p1", "Condition", "c1"))
    await sink.mark_complete("p1", "Condition")
    await sink.finish([["p2", "Condition", "ServerError", "500 for GET Condition"]])

    stored = await ShardSink(directory).open(retry_failed=False)
    assert stored is not None
    assert stored.failed == [["p2", "Condition", "ServerError", "500 for GET Condition"]]

    retry = ShardSink(directory)
    assert await retry.open(retry_failed=True) is None  # a resumed job: the failed stream runs again
    assert retry.is_complete("p1", "Condition")
    assert not retry.is_complete("p2", "Condition")
    await retry.aclose()


@pytest.mark.anyio
async def test_two_runs_of_one_shard_never_write_at_once(tmp_path: Path) -> None:
    directory = tmp_path / "shard"
    holder = ShardSink(directory)
    await holder.open(retry_failed=False)
    second = ShardSink(directory)
    with anyio.move_on_after(0.5) as waited:
        await second.open(retry_failed=False)
    assert waited.cancelled_caught  # it waits for the lock while the first run holds it
    await holder.aclose()
    with anyio.fail_after(2):
        await second.open(retry_failed=False)
    await second.aclose()


def test_the_merge_keeps_shard_order_and_renames_whole_files(tmp_path: Path) -> None:
    for index, ids in enumerate([["a", "b"], ["c"], []]):
        directory = shard_dir(tmp_path, index)
        directory.mkdir(parents=True)
        if ids:
            body = b"".join(orjson.dumps({"resourceType": "Condition", "id": i}) + b"\n" for i in ids)
            (directory / "Condition.ndjson.part").write_bytes(body)

    files = merge_shards(tmp_path, 3)

    assert files == {"Condition": tmp_path / "Condition.ndjson"}
    assert lines(tmp_path / "Condition.ndjson") == ["a", "b", "c"]
    assert not list(tmp_path.glob("**/*.ndjson.tmp"))


def test_a_shard_runs_in_this_process_without_dask(
    sandbox_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: Served = sandbox_factory(patients=4)
    sb = served.sandbox
    patients = list(sb.dataset.patient_ids)
    expected = truth(sb, patients)
    monkeypatch.setenv("EPIC_FHIR_ACCESS_TOKEN", sb.issue_token("in-process", lifetime=600))
    job = JobSpec(
        job_id="in-process",
        client=ClientSpec(served.url, auth=TokenEnvAuth()),
        types=tuple(TYPES),
        expand=True,
        concurrency=4,
        out=str(tmp_path),
        redis=None,
        retry_failed=False,
    )
    try:
        result = run_shard(job, 0, tuple(patients))
        again = run_shard(job, 0, tuple(patients))  # finished: returned from done.json, nothing fetched
    finally:
        anyio.run(close_job, "in-process")
    assert result["outcome"]["failed"] == []
    assert again["skipped"] is True
    outcome = read_outcome(tmp_path, 0)
    assert outcome is not None
    assert outcome.counts == {t: len(ids) for t, ids in expected.items()}
    merge_shards(tmp_path, 1)
    assert_exact(tmp_path, expected)
    assert os.listdir(shard_dir(tmp_path, 0))
