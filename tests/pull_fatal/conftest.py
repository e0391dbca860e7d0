"""Helpers for the fatal-error tests of the pull: a wire that breaks the token endpoint, discovery or FHIR."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pytest

from epic_fhir_async.auth import _request
from epic_fhir_async.sandbox import EpicSandbox, SandboxConfig

Fault = Literal["404", "500", "down"] | None
FhirRule = Callable[[httpx.Request], httpx.Response | None]

#: Four streams per patient (no expansion needed: Observation carries its category).
TYPES = ["Patient", "Condition", "Observation?category=laboratory", "MedicationRequest"]


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


@dataclass
class FakePage:
    resources: list[dict[str, Any]]
    outcomes: list[Any] = field(default_factory=list)


@dataclass
class FakeSearcher:
    """``search(type, **params)`` with one page of two resources whose ids carry the patient id."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def search(self, resource_type: str, /, **params: Any) -> FakeQuery:
        self.calls.append((resource_type, params))
        return FakeQuery(resource_type, params)


@dataclass
class FakeQuery:
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


@pytest.fixture
def sandbox() -> EpicSandbox:
    return EpicSandbox(SandboxConfig(seed=3, patients=30))


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token request's single retry of a transient failure waits 1 s; not in tests."""
    monkeypatch.setattr(_request, "TOKEN_RETRY_DELAY", 0.0)
