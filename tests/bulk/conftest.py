"""Fixtures for the bulk client tests: an in-process sandbox on a frozen clock and a client bound to it.

Polling never waits for real: the cadence is a few milliseconds and the sandbox clock is advanced from the
progress callback (``advance_each_poll``), so a "30-minute export" takes a handful of polls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth
from epic_fhir_async._retry import RetryPolicy
from epic_fhir_async.bulk._manifest import BulkProgress, PollCadence
from epic_fhir_async.sandbox import EpicSandbox, SandboxClock

CLIENT_ID = "bulk-sdk-client"
TYPES = ["Patient", "Observation", "Condition"]
FAST = PollCadence(initial=0.001, maximum=0.005, max_retry_after=0.005, min_delay=0.0)


@pytest.fixture
def sandbox() -> EpicSandbox:
    sb = EpicSandbox(seed=0, patients=12, clock=SandboxClock(frozen_at=1_750_000_000.0))
    sb.bulk.export_seconds = 1800.0
    sb.bulk.resources_per_file = 40
    return sb


@pytest.fixture
def group_id(sandbox: EpicSandbox) -> str:
    return str(sandbox.bulk.dataset.group_id)


def make_client(
    sb: EpicSandbox,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    auth: Any = None,
    retry: RetryPolicy | None = None,
    **options: Any,
) -> EpicFHIRClient:
    return EpicFHIRClient(
        sb.base_url,
        auth=auth if auth is not None else StaticTokenAuth(sb.issue_token(client_id=CLIENT_ID, lifetime=1e9)),
        transport=transport or sb.transport(),
        retry=retry or RetryPolicy(max_attempts=1),
        **options,
    )


@pytest.fixture
async def client(sandbox: EpicSandbox) -> AsyncIterator[EpicFHIRClient]:
    async with make_client(sandbox) as c:
        yield c


def advance_each_poll(sb: EpicSandbox, seconds: float = 600.0) -> Callable[[BulkProgress], None]:
    """A progress callback that moves the sandbox clock on, as if ``seconds`` passed between polls."""

    def progress(event: BulkProgress) -> None:
        if not event.done:
            sb.clock.advance(seconds)

    return progress


async def drain(stream: Any) -> int:
    """Enter a resource stream and read it to the end; the number of resources."""
    n = 0
    async with stream as entered:
        async for _ in entered:
            n += 1
    return n
