"""Fakes for the pull tests.

* :class:`FakeSearcher`: ``search(type, **params)`` whose pages are deterministic and instrumented (the
  engine's unit tests); :class:`OnePageSearcher`: one page of two resources per stream;
* :class:`Meter`: the sandbox's transport counting FHIR requests (in flight, at most, in all), able to
  answer 404 for some patients (pulls iterated without ``async with``);
* :class:`Wire`: the sandbox's transport counting token, discovery and FHIR requests and breaking them on
  demand (pulls whose credentials or setup fail).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth
from epic_fhir_async._outcome import OperationOutcome
from epic_fhir_async.sandbox import EpicSandbox

from ..conftest import fast_sdk_retries

# -- fake searchers ---------------------------------------------------------------------------------------


@dataclass
class FakePage:
    resources: list[dict[str, Any]]
    outcomes: list[OperationOutcome] = field(default_factory=list)
    next_url: str | None = None


@dataclass
class FakeSearcher:
    """``search(type, **params)``: ``pages`` pages of ``page_size`` resources, ids derived from the params."""

    pages: int = 2
    page_size: int = 3
    delay: float = 0.0
    fail: set[tuple[str, str]] = field(default_factory=set)  # (patient id, resource type) that raise
    fail_after_pages: int = 0
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    running: int = 0  # page generators alive (producer tasks inside a search)
    fetched: int = 0
    # Pages wait until ``hold_until`` are in flight together, so tests that check a concurrency limit is
    # reached do not depend on scheduling luck (the timeout only keeps a broken engine from hanging).
    hold_until: int = 0
    gate: anyio.Event = field(default_factory=anyio.Event)

    def search(self, resource_type: str, /, **params: Any) -> FakeQuery:
        self.calls.append((resource_type, params))
        return FakeQuery(self, resource_type, params)


@dataclass
class FakeQuery:
    owner: FakeSearcher
    resource_type: str
    params: dict[str, Any]

    async def pages(self) -> AsyncIterator[FakePage]:
        o = self.owner
        pid = str(self.params.get("patient") or self.params.get("_id"))
        tag = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()) if k not in {"patient", "_id"})
        o.running += 1
        try:
            for n in range(o.pages):
                o.in_flight += 1
                o.max_in_flight = max(o.max_in_flight, o.in_flight)
                try:
                    if o.in_flight >= o.hold_until:
                        o.gate.set()
                    with anyio.move_on_after(2):
                        await o.gate.wait()
                    await anyio.sleep(o.delay)
                    if (pid, self.resource_type) in o.fail and n >= o.fail_after_pages:
                        raise RuntimeError(f"boom on page {n}")
                finally:
                    o.in_flight -= 1
                resources = [
                    {"resourceType": self.resource_type, "id": f"{pid}-{tag}-{n}-{i}"}
                    for i in range(o.page_size)
                ]
                o.fetched += len(resources)
                outcomes = [OperationOutcome(issues=(), raw={"resourceType": "OperationOutcome"})]
                yield FakePage(resources, outcomes if n == 0 else [])
        finally:
            o.running -= 1


@pytest.fixture
def searcher() -> FakeSearcher:
    return FakeSearcher()


@dataclass
class OnePageSearcher:
    """``search(type, **params)`` with one page of two resources whose ids carry the patient id (and a note
    that no repr may show)."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def search(self, resource_type: str, /, **params: Any) -> OnePageQuery:
        self.calls.append((resource_type, params))
        return OnePageQuery(resource_type, params)


@dataclass
class OnePageQuery:
    resource_type: str
    params: dict[str, Any]

    async def pages(self) -> AsyncIterator[FakePage]:
        pid = str(self.params.get("patient") or self.params.get("_id"))
        yield FakePage(
            [
                {"resourceType": self.resource_type, "id": f"{pid}-{i}", "note": "SECRET-NOTE"}
                for i in range(2)
            ]
        )


# -- wires on the sandbox's transport ------------------------------------------------------------------------

Fault = Literal["404", "500", "down"] | None
FhirRule = Callable[[httpx.Request], httpx.Response | None]

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


def connect(sb: EpicSandbox, transport: httpx.AsyncBaseTransport) -> EpicFHIRClient:
    return EpicFHIRClient(sb.base_url, auth=StaticTokenAuth(sb.issue_token("bare-pull")), transport=transport)


class Wire(httpx.AsyncBaseTransport):
    """The sandbox's transport, counting token, discovery and FHIR requests and breaking them on demand.

    ``token`` / ``discovery``: ``"404"`` / ``"500"`` answer that status, ``"down"`` raises a connection error
    (nothing listens).
    ``fhir``: a rule returning a response to send instead of the sandbox's (or ``None`` to pass through).
    """

    def __init__(self, sb: EpicSandbox) -> None:
        self.inner = sb.transport()
        self.token: Fault = None
        self.discovery: Fault = None
        self.fhir: FhirRule | None = None
        self.token_requests = 0
        self.discovery_requests = 0
        self.fhir_requests = 0

    @staticmethod
    def _fault(fault: Fault, request: httpx.Request) -> httpx.Response | None:
        if fault == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if fault is not None:
            return httpx.Response(int(fault), text="an IIS error page")
        return None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        answer: httpx.Response | None
        if path.endswith("/oauth2/token"):
            self.token_requests += 1
            answer = self._fault(self.token, request)
        elif path.endswith(("/.well-known/smart-configuration", "/metadata")):
            self.discovery_requests += 1
            answer = self._fault(self.discovery, request)
        else:
            self.fhir_requests += 1
            answer = self.fhir(request) if self.fhir is not None else None
        if answer is not None:
            return answer
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token request's single retry of a transient failure waits 1 s; not in tests."""
    fast_sdk_retries(monkeypatch, 0.0)
