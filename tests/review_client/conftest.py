"""Fixtures for the review fixes: a recording MockTransport client and the in-process Epic sandbox."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, RetryPolicy, StaticTokenAuth
from epic_fhir_async.sandbox import EpicSandbox

BASE = "https://fhir.example.org/interconnect-fhir-oauth/api/FHIR/R4"
CAMILA = "erXuFYUfucBZaryVksYEcMg3"
JSON_CT = {"Content-Type": "application/fhir+json"}

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that records every request and answers with ``answer`` (a Patient by default)."""

    def __init__(self, answer: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self._answer = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self._answer is not None:
            return self._answer(request)
        return httpx.Response(200, json={"resourceType": "Patient", "id": CAMILA}, headers=JSON_CT)

    def client(self, **kwargs: object) -> EpicFHIRClient:
        kwargs.setdefault("retry", RetryPolicy(max_attempts=1))
        return EpicFHIRClient(
            BASE,
            auth=StaticTokenAuth("tok-review"),
            transport=httpx.MockTransport(self),
            **kwargs,  # type: ignore[arg-type]
        )


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def sandbox() -> EpicSandbox:
    return EpicSandbox()


@pytest.fixture
def sandbox_client(sandbox: EpicSandbox) -> EpicFHIRClient:
    return EpicFHIRClient(
        sandbox.base_url, auth=StaticTokenAuth(sandbox.issue_token()), transport=sandbox.transport()
    )
