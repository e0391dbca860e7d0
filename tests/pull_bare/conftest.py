"""A wire for bare-``async for`` pulls: counts FHIR requests (in flight, at most, in all) and can answer 404."""

from __future__ import annotations

import anyio
import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth
from epic_fhir_async.sandbox import EpicSandbox, SandboxConfig

NOT_FOUND = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "fatal", "code": "not-found", "details": {"text": "not found"}}],
}


class Meter(httpx.AsyncBaseTransport):
    """Wraps the sandbox's transport. ``gate_at``: FHIR requests wait until that many are in flight together
    (so reaching the limit is not scheduling luck; the timeout only keeps a broken pull from hanging).
    ``missing``: patient ids whose searches answer 404 with an OperationOutcome."""

    def __init__(self, sb: EpicSandbox, gate_at: int = 0, missing: frozenset[str] = frozenset()) -> None:
        self.inner = sb.transport()
        self.gate_at = gate_at
        self.missing = missing
        self.released = anyio.Event()
        self.now = self.peak = self.total = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "/api/FHIR/R4/" not in request.url.path:
            return await self.inner.handle_async_request(request)
        self.total += 1
        self.now += 1
        try:
            await self._turn()
            if request.url.params.get("patient") in self.missing:
                return httpx.Response(404, json=NOT_FOUND)
            return await self.inner.handle_async_request(request)
        finally:
            self.now -= 1

    async def _turn(self) -> None:
        self.peak = max(self.peak, self.now)
        if self.now >= self.gate_at:
            self.released.set()
        with anyio.move_on_after(2):
            await self.released.wait()

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def sandbox() -> EpicSandbox:
    return EpicSandbox(SandboxConfig(seed=5, patients=12))


def connect(sb: EpicSandbox, transport: httpx.AsyncBaseTransport) -> EpicFHIRClient:
    return EpicFHIRClient(sb.base_url, auth=StaticTokenAuth(sb.issue_token("bare-pull")), transport=transport)
