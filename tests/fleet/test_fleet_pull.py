"""A pull on a real Dask LocalCluster (2 worker processes) against the sandbox served on 127.0.0.1, with the
token and the rate budget shared through a real redis-server: nothing lost, nothing duplicated, one token
per expiry, the server's rate limit respected, a 429 pausing every worker, a killed worker costing nothing.
"""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from epic_fhir_async import EpicFHIRClient, RetryPolicy, TokenRequestError
from epic_fhir_async.auth import BackendServicesAuth
from epic_fhir_async.fleet import (
    ClientSpec,
    FleetProgress,
    FleetStreamError,
    KeyFileAuth,
    RedisSettings,
    fleet_pull,
)

from .conftest import CLIENT_ID, TYPES, Served, assert_exact, local_cluster, truth, written

pytestmark = pytest.mark.slow


def spec_for(served: Served, **kwargs: Any) -> ClientSpec:
    auth = KeyFileAuth(CLIENT_ID, str(served.key_path), token_url=served.sandbox.token_url)
    return ClientSpec(served.url, auth=auth, **kwargs)


def test_one_token_request_per_expiry_for_the_whole_fleet_and_nothing_lost_or_duplicated(
    dask_client: Any, sandbox_factory: Any, redis_db: str, tmp_path: Path
) -> None:
    served = sandbox_factory(token_lifetime=1, latency=0.05)
    sb = served.sandbox
    patients = list(sb.dataset.patient_ids)
    expected = truth(sb, patients)
    sb.reset_records()

    result = fleet_pull(
        spec_for(served),
        patients,
        TYPES,
        tmp_path / "out",
        dask_client=dask_client,
        shards=4,
        concurrency=8,
        redis=redis_db,
    )

    assert_exact(tmp_path / "out", expected)
    assert result.counts == {t: len(ids) for t, ids in expected.items()}
    assert result.failures == []
    assert not result.resumable
    tokens = sb.times("token", 200)
    assert len(tokens) >= 3, "the run should outlive the token twice"
    # One request per expiry for both workers together: two workers refreshing on their own would ask twice
    # within a few milliseconds; the fleet's requests are a token lifetime (less the refresh margin) apart.
    gaps = [b - a for a, b in itertools.pairwise(tokens)]
    assert min(gaps) > 0.7, gaps
    assert sb.stats["token_requests"] == len(tokens)
    assert result.progress.token_requests == len(tokens)
    # With 1 s tokens the refresh margin is 0.1 s, so on a busy machine a request can reach the server just
    # after its token expired: the server answers 401 and the request is replayed with the next token. Those
    # replays cost no token request of their own (the count above) and lose nothing (assert_exact).
    # At most the requests in flight at each expiry (2 workers x concurrency 8); a token shared wrongly (stale or
    # invalidated for everyone) would fail far more of them.
    assert sb.stats["bearer_failures"] <= 2 * 8 * len(tokens)
    assert not (tmp_path / "out" / ".epic-fhir-fleet").exists()
    manifest = orjson.loads((tmp_path / "out" / "fleet-manifest.json").read_bytes())
    assert manifest["files"]["Condition"]["resources"] == len(expected["Condition"])


def test_the_shared_budget_keeps_the_fleet_under_the_servers_rate_limit(
    dask_client: Any, sandbox_factory: Any, redis_db: str, tmp_path: Path
) -> None:
    served = sandbox_factory(patients=10, rate_limit_rps=50)
    sb = served.sandbox
    patients = list(sb.dataset.patient_ids)
    expected = truth(sb, patients)
    sb.reset_records()
    budget = RedisSettings(redis_db, requests_per_second=40, burst=4)

    result = fleet_pull(
        spec_for(served), patients, TYPES, tmp_path / "out", dask_client=dask_client, shards=4, redis=budget
    )

    assert_exact(tmp_path / "out", expected)
    assert sb.stats["faults:rate_limited"] <= 1, "the budget should keep the fleet under the server's limit"
    fhir = sb.times("fhir")
    busiest = max(sum(1 for t in fhir if start <= t < start + 1.0) for start in fhir)
    assert busiest <= 50
    # Unbudgeted, 2 workers x 8 searches send several hundred requests a second here; paced at 40/s (after a
    # burst of 4) the same requests take this long at least.
    assert fhir[-1] - fhir[0] >= (len(fhir) - 4) / 40 * 0.9
    assert result.progress.rate_limited == sb.stats["faults:rate_limited"]


def test_a_429_to_one_worker_pauses_every_worker_until_retry_after(
    dask_client: Any, sandbox_factory: Any, redis_db: str, tmp_path: Path
) -> None:
    served = sandbox_factory(latency=0.02, inject_429_at=60, inject_retry_after=2)
    sb = served.sandbox
    patients = list(sb.dataset.patient_ids)
    expected = truth(sb, patients)
    sb.reset_records()

    result = fleet_pull(
        spec_for(served), patients, TYPES, tmp_path / "out", dask_client=dask_client, shards=4, redis=redis_db
    )

    assert_exact(tmp_path / "out", expected)
    (told,) = sb.times("fhir", 429)
    fhir = sb.times("fhir")
    # Requests already on the wire when the 429 was sent may still arrive; after that, nobody sends until
    # Retry-After has passed: not the worker that was told, and not the other one.
    assert [round(t - told, 3) for t in fhir if told + 0.3 < t < told + 1.8] == []
    assert sum(1 for t in fhir if t < told) >= 50
    assert sum(1 for t in fhir if t > told + 1.9) >= 50
    assert result.progress.rate_limited == 1


def test_a_worker_killed_mid_shard_loses_and_duplicates_nothing(
    sandbox_factory: Any, redis_db: str, tmp_path: Path
) -> None:
    served = sandbox_factory(latency=0.05)
    sb = served.sandbox
    patients = list(sb.dataset.patient_ids)
    expected = truth(sb, patients)
    sb.reset_records()
    cluster, client = local_cluster(2)
    try:
        pids: dict[str, int] = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        killed: list[FleetProgress] = []

        def kill_once(progress: FleetProgress) -> None:
            # Three shards of four left for two workers: both are inside a shard, with streams committed.
            if not killed and progress.resources >= 400 and progress.shards_done <= 1:
                os.kill(victim, signal.SIGKILL)
                killed.append(progress)

        result = fleet_pull(
            spec_for(served),
            patients,
            TYPES,
            tmp_path / "out",
            dask_client=client,
            shards=4,
            redis=redis_db,
            progress=kill_once,
        )
        assert killed, "the worker was not killed mid-shard"
        assert victim not in client.run(os.getpid).values()
    finally:
        client.close()
        cluster.close()
    assert_exact(tmp_path / "out", expected)
    assert result.failures == []
    assert result.resumed_streams > 0, "the shard that ran again should have resumed from its checkpoint"
    assert sum(result.counts.values()) == sum(len(ids) for ids in expected.values())


def test_failed_streams_are_collected_and_a_resumed_job_fetches_only_them(
    dask_client: Any, sandbox_factory: Any, redis_db: str, tmp_path: Path
) -> None:
    served = sandbox_factory(patients=10)
    sb = served.sandbox
    patients = list(sb.dataset.patient_ids)
    expected = truth(sb, patients)
    sb.reset_records()
    sb.faults.error_rate = 0.15
    sb.faults.error_statuses = (500,)
    once = spec_for(served, retry=RetryPolicy(max_attempts=1))

    first = fleet_pull(
        once, patients, TYPES, tmp_path / "out", dask_client=dask_client, shards=4, redis=redis_db
    )

    assert first.failures, "a 15 % error rate without retries should fail some streams"
    assert first.resumable
    assert (tmp_path / "out" / ".epic-fhir-fleet").is_dir()
    failure = first.failures[0]
    assert isinstance(failure.error, FleetStreamError)
    assert failure.error.error_type == "ServerError"
    assert failure.patient_id in patients
    assert "500" in str(failure.error)
    failed_streams = len(first.failures)
    before = sb.stats["fhir_requests"]

    sb.faults.error_rate = 0.0
    second = fleet_pull(
        once,
        patients,
        TYPES,
        tmp_path / "out",
        dask_client=dask_client,
        shards=4,
        redis=redis_db,
        resume=True,
    )

    assert second.failures == []
    assert not second.resumable
    assert_exact(tmp_path / "out", expected)
    # Only the failed streams are fetched again (a stream is a page or two here), never the completed ones.
    assert failed_streams <= sb.stats["fhir_requests"] - before <= 2 * failed_streams


def test_refused_credentials_end_the_whole_job_once_before_anything_is_written(
    dask_client: Any, sandbox_factory: Any, redis_db: str, tmp_path: Path
) -> None:
    served = sandbox_factory(patients=10)
    sb = served.sandbox

    async def one_client() -> (
        None
    ):  # what one process spends on the refusal (the SDK retries a bare 400 once)
        auth = BackendServicesAuth("not-registered", served.key_path, token_url=sb.token_url)
        async with EpicFHIRClient(sb.base_url, auth=auth, transport=sb.transport()):
            with pytest.raises(TokenRequestError):
                await auth.get_token()

    anyio.run(one_client)
    one_process = sb.stats["token_requests"]
    sb.reset_records()
    wrong = ClientSpec(
        served.url, auth=KeyFileAuth("not-registered", str(served.key_path), token_url=sb.token_url)
    )

    with pytest.raises(TokenRequestError):
        fleet_pull(
            wrong, sb.dataset.patient_ids, TYPES, tmp_path / "out", dask_client=dask_client, redis=redis_db
        )

    assert 1 <= sb.stats["token_requests"] == one_process  # once for the job: not per worker, not per shard
    assert sb.stats["fhir_requests"] == 0
    assert not (tmp_path / "out").exists()
    assert written(tmp_path) == {}
