"""The whole Bulk $export flow against the in-process sandbox: kick-off, wait, stream, download, delete."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from epic_fhir_async import (
    BulkExportError,
    BulkExportTooSoon,
    ConfigurationError,
    EpicFHIRClient,
    FHIRStatusError,
    StaticTokenAuth,
)
from epic_fhir_async._retry import RetryPolicy
from epic_fhir_async.bulk._download import SIDECAR_NAME, BulkTransferStats
from epic_fhir_async.bulk._manifest import BulkProgress
from epic_fhir_async.sandbox import EpicSandbox

from .conftest import CLIENT_ID, FAST, TYPES, advance_each_poll, drain, make_client

pytestmark = pytest.mark.anyio


async def test_whole_flow_streams_exactly_the_manifest_counts(
    sandbox: EpicSandbox, client: EpicFHIRClient, group_id: str
) -> None:
    events: list[BulkProgress] = []

    def progress(event: BulkProgress) -> None:
        events.append(event)
        advance_each_poll(sandbox)(event)

    job = await client.bulk_export(group_id, types=TYPES, cadence=FAST)
    assert job.status_url.startswith(sandbox.base_url + "/BulkRequest/")
    manifest = await job.wait(progress=progress)
    assert events[-1].done
    assert not events[0].done
    assert events[0].text is not None
    assert events[0].percent == 0.0
    assert manifest.requires_access_token is True
    assert {f.type for f in manifest.outputs} == set(TYPES)
    expected = manifest.expected_counts()
    assert sum(expected.values()) > 1000  # several files per type (40 per file)
    assert len(manifest.outputs_of(["Observation"])) > 4

    seen: dict[str, int] = {}
    ids: set[tuple[str, str]] = set()
    async with job.resources(concurrency=3) as stream:
        async for resource in stream:
            seen[resource["resourceType"]] = seen.get(resource["resourceType"], 0) + 1
            ids.add((resource["resourceType"], resource["id"]))
    assert seen == expected
    assert len(ids) == sum(expected.values())  # every line exactly once
    assert stream.counts == expected
    assert stream.files_done == len(manifest.outputs)

    sequential: dict[str, int] = {}
    async for resource in job.resources(types=["Condition"]):
        sequential[resource["resourceType"]] = sequential.get(resource["resourceType"], 0) + 1
    assert sequential == {"Condition": expected["Condition"]}

    await job.delete()
    assert sandbox.stats["bulk_deletes"] == 1
    # Deleting freed Epic's one-export slot: the same client may kick off the same Group again.
    again = await client.bulk_export(group_id, types=["Patient"], cadence=FAST)
    assert again.status_url != job.status_url


async def test_batches_go_on_exactly_where_an_async_for_over_resources_stopped(
    sandbox: EpicSandbox, client: EpicFHIRClient, group_id: str
) -> None:
    job = await client.bulk_export(group_id, types=TYPES, cadence=FAST)
    manifest = await job.wait(progress=advance_each_poll(sandbox))
    total = sum(manifest.expected_counts().values())
    stream = job.resources(concurrency=2)
    with pytest.raises(RuntimeError, match=r"before stream\.batches\(\)"):
        await anext(aiter(stream.batches()))
    seen: list[tuple[str, str]] = []
    async with stream:
        async for resource in stream:
            seen.append((resource["resourceType"], resource["id"]))
            if len(seen) == 7:  # mid-way through the first file's list
                break
        resource = await anext(stream)
        seen.append((resource["resourceType"], resource["id"]))
        sizes = []
        async for batch in stream.batches():
            sizes.append(len(batch))
            seen += [(r["resourceType"], r["id"]) for r in batch]
        after = [r async for r in stream]
    assert len(seen) == len(set(seen)) == total  # nothing lost, nothing twice
    assert sizes[0] < max(sizes)  # the first list was the rest of the one the loop had started
    assert after == []


async def test_batches_of_a_size_are_that_long_but_the_last_and_lose_nothing(
    sandbox: EpicSandbox, client: EpicFHIRClient, group_id: str
) -> None:
    job = await client.bulk_export(group_id, types=TYPES, cadence=FAST)
    manifest = await job.wait(progress=advance_each_poll(sandbox))
    total = sum(manifest.expected_counts().values())
    for size in (1, 7, 100, total + 1):
        seen: list[tuple[str, str]] = []
        sizes: list[int] = []
        async with job.resources(concurrency=3) as stream:
            async for resource in stream:  # lists go on from here, and need not start a file
                seen.append((resource["resourceType"], resource["id"]))
                if len(seen) == 3:
                    break
            async for batch in stream.batches(size=size):
                sizes.append(len(batch))
                seen += [(r["resourceType"], r["id"]) for r in batch]
        assert len(seen) == len(set(seen)) == total, size  # nothing lost, nothing twice
        assert set(sizes[:-1]) <= {size}, size
        assert 1 <= sizes[-1] <= size, size
    assert sizes == [total - 3]  # a size beyond the export: the rest in one list


@pytest.mark.parametrize("size", [0, -1, True, 2.5, "10"])
async def test_a_batch_size_that_is_not_a_positive_whole_number_is_refused(
    sandbox: EpicSandbox, client: EpicFHIRClient, group_id: str, size: Any
) -> None:
    job = await client.bulk_export(group_id, types=["Patient"], cadence=FAST)
    manifest = await job.wait(progress=advance_each_poll(sandbox))
    async with job.resources() as stream:
        with pytest.raises(ConfigurationError, match=r"batches\(size=\.\.\.\) takes a whole number"):
            stream.batches(size=size)
        # Refused before anything was read: the stream goes on whole.
        assert len([r async for r in stream]) == manifest.expected_counts()["Patient"]


async def test_download_writes_files_and_a_rerun_skips_complete_ones(
    sandbox: EpicSandbox, client: EpicFHIRClient, group_id: str, tmp_path: Path
) -> None:
    job = await client.bulk_export(group_id, types=TYPES, cadence=FAST)
    manifest = await job.wait(progress=advance_each_poll(sandbox))
    stats = BulkTransferStats()
    result = await job.download(tmp_path, stats=stats)
    assert result.counts() == manifest.expected_counts()
    assert stats.resources == result.resources
    assert stats.files_done == stats.files_total
    for f in result.files:
        lines = f.path.read_bytes().splitlines()
        assert len(lines) == f.ref.count
        assert {line.count(b'"resourceType"') >= 1 for line in lines} == {True}
    assert not list(tmp_path.glob(".*.part"))
    assert (tmp_path / SIDECAR_NAME).exists()
    # The sandbox's error file says what was exported (an informational OperationOutcome).
    assert result.error_files
    assert result.outcomes
    assert all(o.issues for o in result.outcomes)

    # A crash that lost one file: the rerun fetches only that one.
    lost = result.files[1].path
    lost.unlink()
    served = sandbox.stats["bulk_files_served"]
    again = await job.download(tmp_path)
    assert sandbox.stats["bulk_files_served"] == served + 1
    assert [f.skipped for f in again.files] == [f.path != lost for f in again.files]
    assert again.counts() == manifest.expected_counts()
    assert len(lost.read_bytes().splitlines()) == result.files[1].lines


async def test_error_files_are_logged_without_diagnostics(
    sandbox: EpicSandbox,
    client: EpicFHIRClient,
    group_id: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A type the Group has no data for gets an informational 4101 line in the error file (a code from Epic's table).
    job = await client.bulk_export(group_id, types=["Patient", "ImagingStudy"], cadence=FAST)
    await job.wait(progress=advance_each_poll(sandbox))
    with caplog.at_level(logging.INFO, logger="epic_fhir_async"):
        result = await job.download(tmp_path)
    codes = {i.epic_code for o in result.outcomes for i in o.issues}
    assert "4101" in codes
    diagnostics = [i.diagnostics for o in result.outcomes for i in o.issues if i.diagnostics]
    assert diagnostics
    assert "error file" in caplog.text
    for text in diagnostics:
        assert text not in caplog.text


async def test_resume_from_a_saved_status_url_after_a_crash(
    sandbox: EpicSandbox, group_id: str, tmp_path: Path
) -> None:
    saved = tmp_path / "status-url.txt"

    async def first_run() -> None:
        async with make_client(sandbox) as client:
            job = await client.bulk_export(group_id, types=TYPES, cadence=FAST)
            saved.write_text(job.status_url)
            with anyio.move_on_after(0.05):  # the process "crashes" while still waiting
                await job.wait(poll_interval=0.001, max_interval=0.001)
            assert job.manifest is None

    await first_run()
    async with make_client(sandbox) as client:
        job = client.bulk_export_job(saved.read_text(), cadence=FAST)
        manifest = await job.wait(progress=advance_each_poll(sandbox))
        total = 0
        async with job.resources() as stream:
            async for _ in stream:
                total += 1
    assert total == sum(manifest.expected_counts().values())
    assert sandbox.stats["bulk_kickoffs"] == 1


async def test_cancel_sends_delete_and_frees_the_slot(
    sandbox: EpicSandbox, client: EpicFHIRClient, group_id: str
) -> None:
    job = await client.bulk_export(group_id, types=["Patient"], cadence=FAST)
    with pytest.raises(BulkExportTooSoon):  # one export per client and Group at a time
        await client.bulk_export(group_id, types=["Patient"])
    await job.cancel()
    assert sandbox.stats["bulk_deletes"] == 1
    with pytest.raises(BulkExportError, match="gone"):
        await job.wait()
    await job.cancel()  # already gone: still fine
    await client.bulk_export(group_id, types=["Patient"])


async def test_leaving_async_with_early_cancels_the_job(
    sandbox: EpicSandbox, client: EpicFHIRClient, group_id: str
) -> None:
    urls: list[str] = []

    async def fail_inside() -> None:
        async with client.bulk_export(group_id, types=["Patient"], cadence=FAST) as job:
            urls.append(job.status_url)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_inside()
    status_url = urls[0]
    assert sandbox.stats["bulk_deletes"] == 1
    with anyio.move_on_after(0.05) as scope:
        async with client.bulk_export(group_id, types=["Patient"], cadence=FAST) as job:
            assert job.status_url != status_url
            await job.wait(poll_interval=0.001, max_interval=0.001)  # never finishes: frozen clock
    assert scope.cancelled_caught
    assert sandbox.stats["bulk_deletes"] == 2  # the shielded DELETE ran despite the cancellation
    async with client.bulk_export(group_id, types=["Patient"], cadence=FAST) as job:
        await job.wait(progress=advance_each_poll(sandbox))
    assert sandbox.stats["bulk_deletes"] == 2  # a normal exit leaves the job alone


async def test_cool_down_rejection_is_typed_and_not_retried(sandbox: EpicSandbox, group_id: str) -> None:
    sandbox.bulk.cooldown_seconds = 86400.0
    async with make_client(sandbox, retry=None) as client:  # the default retry policy is in force
        job = await client.bulk_export(group_id, types=["Patient"])
        await job.cancel()
        with pytest.raises(BulkExportTooSoon) as info:
            await client.bulk_export(group_id, types=["Patient"])
    assert info.value.retry_after is not None
    assert 86000 < info.value.retry_after <= 86400
    assert info.value.operation_outcome is not None
    assert "too recently" in str(info.value)
    assert isinstance(info.value.__cause__, FHIRStatusError)
    assert sandbox.stats["bulk_rejections"] == 1  # sent once, never retried


async def test_active_job_rejection_without_retry_after(sandbox: EpicSandbox, group_id: str) -> None:
    async with make_client(sandbox, retry=None) as client:
        await client.bulk_export(group_id, types=["Patient"])
        with anyio.fail_after(5):  # the default policy would retry a 429 for seconds; the kick-off must not
            with pytest.raises(BulkExportTooSoon) as info:
                await client.bulk_export(group_id, types=["Patient"])
    assert info.value.retry_after is None
    assert sandbox.stats["bulk_rejections"] == 1


async def test_patient_level_export_is_refused_at_epic(client: EpicFHIRClient) -> None:
    with pytest.raises(BulkExportError, match="Group-level"):
        await client.bulk_export(patient_level=True)
    with pytest.raises(BulkExportError, match="Group-level"):
        await client.bulk_export()


async def test_since_is_refused_before_the_kickoff_because_epic_rejects_it(
    sandbox: EpicSandbox, client: EpicFHIRClient, group_id: str
) -> None:
    with pytest.raises(ConfigurationError, match="_since"):
        await client.bulk_export(group_id, types=["Patient"], since="2024-01-01T00:00:00Z")
    with pytest.raises(ConfigurationError, match="type_filters"):
        await client.bulk_export(group_id, extra_params={"_since": "2024-01-01T00:00:00Z"})
    assert sandbox.stats["bulk_kickoffs"] + sandbox.stats["bulk_kickoff_errors"] == 0  # nothing was sent


async def test_since_reaches_the_server_when_epic_rules_are_off(sandbox: EpicSandbox, group_id: str) -> None:
    client = EpicFHIRClient(
        sandbox.base_url,
        auth=StaticTokenAuth(sandbox.issue_token(client_id=CLIENT_ID, lifetime=1e9)),
        transport=sandbox.transport(),
        retry=RetryPolicy(max_attempts=1),
        epic_rules=False,
    )
    async with client:
        with pytest.raises(BulkExportError) as info:
            await client.bulk_export(group_id, types=["Patient"], since="2024-01-01T00:00:00Z")
    assert sandbox.stats["bulk_kickoff_errors"] == 1
    assert info.value.status_code == 400
    assert info.value.operation_outcome is not None
    # The parameter named by diagnostics is on the outcome, not in str(): diagnostics may hold patient data.
    assert any("_since" in (i.diagnostics or "") for i in info.value.operation_outcome.issues)
    assert "diagnostics withheld" in str(info.value.operation_outcome)


async def test_type_filter_and_post_kickoff(
    sandbox: EpicSandbox, client: EpicFHIRClient, group_id: str
) -> None:
    sandbox.bulk.allow_post = True
    lab = "Observation?category=laboratory,social-history"
    job = await client.bulk_export(
        group_id, types=["Observation"], type_filters=[lab], method="POST", cadence=FAST
    )
    await job.wait(progress=advance_each_poll(sandbox))
    categories: set[str] = set()
    async with job.resources() as stream:
        async for resource in stream:
            categories.update(
                c["code"]
                for cat in resource["category"]
                for c in cat["coding"]
                if c.get("system") == "http://terminology.hl7.org/CodeSystem/observation-category"
            )
    assert categories
    assert categories <= {"laboratory", "social-history"}
    await job.delete()
    job = await client.bulk_export(group_id, types=["Observation"], type_filters=[lab], cadence=FAST)
    manifest = await job.wait(progress=advance_each_poll(sandbox))
    assert manifest.request is not None
    assert "%2C" in manifest.request


async def test_an_expired_file_is_a_clear_error(
    sandbox: EpicSandbox, client: EpicFHIRClient, group_id: str
) -> None:
    job = await client.bulk_export(group_id, types=["Patient"], cadence=FAST)
    await job.wait(progress=advance_each_poll(sandbox))
    sandbox.clock.advance(15 * 86400)  # past the sandbox's 14-day retention
    with pytest.raises(BulkExportError, match="expire") as info:
        await drain(job.resources())
    assert info.value.status_code == 410


# httpx's body iterators are nested async generators that an early exit leaves to the GC; trio reports that
# (a known httpx limitation: encode/httpx#3593, #3777). The SDK closes every generator it owns.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object:pytest.PytestUnraisableExceptionWarning"
)
async def test_stopping_early_cancels_the_readers(
    sandbox: EpicSandbox, client: EpicFHIRClient, group_id: str
) -> None:
    job = await client.bulk_export(group_id, types=TYPES, cadence=FAST)
    await job.wait(progress=advance_each_poll(sandbox))
    got: list[Any] = []
    async with job.resources(concurrency=2, buffer=1) as stream:
        async for resource in stream:
            got.append(resource)
            if len(got) == 5:
                break
    assert len(got) == 5
    assert stream.files_done < len(job.require_manifest().outputs)
