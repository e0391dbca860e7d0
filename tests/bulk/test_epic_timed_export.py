"""A Bulk export as Epic runs it (``SandboxConfig.epic_bulk()``): hours of sandbox time, status polls with
neither ``Retry-After`` nor ``X-Progress``, ``_since`` refused (docs/epic-notes.md §4.1-§4.3).

The SDK's own cadence drives the waits, scaled down 10,000 times in real time while the sandbox clock moves
the full amount, so a three-hour job takes about a second and the access token (one hour) expires twice.
"""

from __future__ import annotations

import httpx
import pytest

from epic_fhir_async import EpicFHIRClient
from epic_fhir_async.auth import BackendServicesAuth, generate_private_key, public_jwks
from epic_fhir_async.bulk import BulkProgress, PollCadence
from epic_fhir_async.sandbox import EpicSandbox, SandboxClock, SandboxConfig

from .conftest import drain

pytestmark = pytest.mark.anyio

SCALE = 10_000.0
#: The default cadence (2 s doubling to 10 minutes) divided by SCALE.
CADENCE = PollCadence(initial=2.0 / SCALE, maximum=600.0 / SCALE, min_delay=0.0)


async def test_an_hours_long_export_without_retry_after_or_progress_completes() -> None:
    sb = EpicSandbox(
        SandboxConfig.epic_bulk(seed=0, patients=6), clock=SandboxClock(frozen_at=1_750_000_000.0)
    )
    assert sb.bulk.export_seconds >= 3600
    assert not sb.bulk.progress_headers
    assert sb.bulk.since == "reject"
    key = generate_private_key("RS384")
    sb.register_client("epic-bulk", public_jwks(key))
    auth = BackendServicesAuth(
        "epic-bulk", key, token_url=sb.token_url, wall_clock=sb.clock.now, clock=sb.clock.now
    )
    events: list[BulkProgress] = []

    def progress(event: BulkProgress) -> None:
        events.append(event)
        if event.next_poll is not None and not event.done:
            sb.clock.advance(event.next_poll * SCALE)  # the wait the SDK chose, in sandbox time

    async with EpicFHIRClient(sb.base_url, auth=auth, transport=sb.transport()) as client:
        job = await client.bulk_export(
            str(sb.dataset.group_id), types=["Patient", "Condition"], cadence=CADENCE
        )
        manifest = await job.wait(progress=progress)
        resources = await drain(job.resources())
        await job.cancel()

    running = [e for e in events if not e.done]
    assert running
    assert all(e.text is None and e.percent is None for e in running)  # no X-Progress, ever
    # No Retry-After either: the SDK's own backoff, doubling from 2 s and settling at 10 minutes.
    waits = [round(e.next_poll * SCALE) for e in running if e.next_poll is not None]
    assert waits[:5] == [2, 4, 8, 16, 32]
    assert max(waits) == 600
    assert waits[-3:] == [600, 600, 600]
    assert sum(waits) >= 3 * 3600
    assert events[-1].done
    assert {ref.type for ref in manifest.outputs} == {"Patient", "Condition"}
    assert resources == sum(ref.count or 0 for ref in manifest.outputs) > 0
    # The one-hour tokens were renewed during the wait, before they expired (no 401 on the way).
    assert sb.stats["token_requests"] >= 3
    assert sb.stats["bearer_failures"] == 0


async def test_the_epic_bulk_profile_refuses_since_and_keeps_the_group_for_a_day() -> None:
    sb = EpicSandbox(
        SandboxConfig.epic_bulk(seed=0, patients=3), clock=SandboxClock(frozen_at=1_750_000_000.0)
    )
    assert sb.bulk.cooldown_seconds == 86400
    headers = {
        "Authorization": f"Bearer {sb.issue_token('raw', lifetime=1e9)}",
        "Accept": "application/fhir+json",
        "Prefer": "respond-async",
    }
    url = f"{sb.base_url}/Group/{sb.dataset.group_id}/$export"
    async with httpx.AsyncClient(transport=sb.transport(), headers=headers) as raw:
        since = await raw.get(url, params={"_since": "2024-01-01T00:00:00Z"})
        assert since.status_code == 400
        first = await raw.get(url)
        assert first.status_code == 202
        assert "x-progress" not in (await raw.get(first.headers["content-location"])).headers
        await raw.delete(first.headers["content-location"])
        sb.clock.advance(3600)
        again = await raw.get(url)
        assert again.status_code == 429  # Epic's "requested this Group too recently", within the day
