"""Under injected faults nothing is lost, duplicated or leaked.

A pull yields exactly the fault-free set: 40 patients x 4 queries with 5 % server errors, a rate limit answered with 429 + Retry-After, dropped
connections and 5-second tokens (sandbox token lifetime + Backend Services auth; the sandbox clock is frozen
and moved forward as streams complete, so tokens keep expiring under the client's feet and the rate-limit
window slides): none lost, none duplicated, none extra.

Speed: the client's own ``RetryTransport`` is used, with its injectable ``sleep`` moving the sandbox clock by
the requested wait but really sleeping at most 10 ms, so Retry-After waits (>= 1 s) and backoffs do not make
the test slow; everything else is the real stack.

The soak in short (``nox -s soak`` runs the long one on real sockets): pulls and bulk exports against the
sandbox, in-process for about a second per backend with every fault on except the 429 rate limit (its
``Retry-After`` is at least one real second; the pull above covers it on a frozen clock). Waits are shortened
(backoff, token retry, kick-off retry); every fault is still injected.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import anyio
import pytest

from benchmarks.soak import SoakOptions, default_faults, run_soak
from epic_fhir_async import BackendServicesAuth, EpicFHIRClient
from epic_fhir_async._http import RetryTransport
from epic_fhir_async._retry import RetryPolicy
from epic_fhir_async.auth import generate_private_key, public_jwks
from epic_fhir_async.bulk._manifest import PollCadence
from epic_fhir_async.pull._values import PullProgress
from epic_fhir_async.sandbox import EpicSandbox, SandboxClock, SandboxConfig
from epic_fhir_async.sandbox._data import build_dataset

from ..conftest import fast_sdk_retries

pytestmark = pytest.mark.anyio

SEED = 11
PATIENTS = 40
QUERIES = ["Condition", "Observation?category=vital-signs", "Observation?category=laboratory", "Encounter"]


async def pull_all(
    sb: EpicSandbox, *, advance: float = 0.0
) -> tuple[Counter[tuple[str, str, str]], int | None]:
    key = generate_private_key("RS384")
    sb.register_client("fault-test", public_jwks(key))
    # The auth's clocks are the sandbox's: the token manager sees the same (fast-moving) time as the server.
    auth = BackendServicesAuth(
        "fault-test", key, token_url=sb.token_url, clock=sb.clock.now, wall_clock=sb.clock.now
    )
    patients = build_dataset(seed=SEED, patients=PATIENTS).patient_ids[:PATIENTS]
    got: Counter[tuple[str, str, str]] = Counter()
    retries: list[int | None] = [None]

    def tick(progress: PullProgress) -> None:
        retries[0] = progress.retries
        if progress.event == "stream_done" and advance:
            sb.clock.advance(advance)  # sandbox time runs faster than ours: 5 s tokens expire mid-pull

    async def fast_sleep(seconds: float) -> None:
        # The server sees the wait the client asked for (Retry-After, backoff), which really lasts <= 10 ms.
        # Tasks waiting together (the shared 429 gate) move the clock once, not once each.
        target = sb.clock.now() + seconds
        await anyio.sleep(min(seconds, 0.01))
        behind = target - sb.clock.now()
        if behind > 0:
            sb.clock.advance(behind)

    policy = RetryPolicy(max_attempts=10, backoff_base=0.01, max_total_wait=600.0)
    transport = RetryTransport(sb.transport(), policy=policy, sleep=fast_sleep)
    async with (
        EpicFHIRClient(sb.base_url, auth=auth, transport=transport) as client,
        client.pull(patients, QUERIES, concurrency=8, progress=tick) as stream,
    ):
        async for item in stream:
            got[(item.patient_id, item.query, item.resource["id"])] += 1
    return got, retries[0]


def sandbox(error_rate: float = 0.0, drop_rate: float = 0.0, rate_limit_rps: float = 0.0) -> EpicSandbox:
    config = SandboxConfig(
        seed=SEED,
        patients=PATIENTS,
        token_lifetime=5.0,
        page_size=25,
        error_rate=error_rate,
        drop_rate=drop_rate,
        rate_limit_rps=rate_limit_rps,
    )
    return EpicSandbox(config, clock=SandboxClock(frozen_at=time.time()))


async def test_faults_lose_nothing_and_add_nothing() -> None:
    clean_sb = sandbox()
    clean, clean_retries = await pull_all(clean_sb)
    assert len(clean) > 1000
    assert max(clean.values()) == 1

    sb = sandbox(error_rate=0.05, drop_rate=0.03, rate_limit_rps=25.0)
    faulty, retries = await pull_all(sb, advance=0.1)

    assert faulty == clean  # the same resources, each exactly once
    assert clean_retries == 0
    assert retries is not None
    assert retries >= sb.stats["faults:error"] + sb.stats["faults:drop"]  # each fault was retried
    assert sb.stats["faults:error"] > 0
    assert sb.stats["faults:drop"] > 0
    assert sb.stats["faults:rate_limited"] > 0
    assert sb.stats["token_requests"] > clean_sb.stats["token_requests"]  # 5 s tokens renewed mid-pull


# -- the short soak ----------------------------------------------------------------------------------------


@pytest.fixture
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_sdk_retries(monkeypatch, 0.01)


async def test_short_soak_loses_nothing_duplicates_nothing_leaks_nothing(short_waits: None) -> None:
    opts = SoakOptions(
        seconds=0.6,
        patients=3,
        served=False,
        token_lifetime=1.0,  # a refresh or two during the run, with token flakes
        # Sweeps further apart than a loaded machine takes to re-page a restarted search: at 0.4 s a restart
        # that has not caught up yet is expired again (SessionExpired, by design) about once in ten runs.
        expire_every=1.0,
        export_seconds=0.1,
        retry=RetryPolicy(max_attempts=10, backoff_base=0.005, backoff_max=0.05),
        cadence=PollCadence(initial=0.02, maximum=0.05, max_retry_after=0.05, min_delay=0.01),
        # Every fault of the long soak, shorter spikes, and no rate limit (its Retry-After is >= 1 real s).
        faults=dataclasses.replace(
            default_faults(), rate_limit_rps=0.0, latency_spike=0.02, latency_spike_rate=0.05
        ),
    )
    report = await run_soak(opts)
    assert report.errors == []
    assert (report.lost, report.duplicated, report.unexpected) == (0, 0, 0)
    assert (report.leaked_sockets, report.leaked_tasks) == (0, 0)
    assert report.received == report.expected > 0
    assert report.rounds["pull"] >= 1
    assert report.rounds["bulk"] >= 1
    faults = report.faults
    assert faults["server errors (5xx)"] > 0  # ~5 % of hundreds of requests: never zero in practice
    assert faults["connections cut mid-body"] > 0
    assert report.retries >= faults["server errors (5xx)"]
    assert "PASS" in report.table()
