"""Fixtures for the auth tests: keys, a manual clock, and ``fake``, the tiny Epic-like token server of
:class:`tests.conftest.FakeEpic` (its token endpoint verifies client assertions with PyJWT, independently of
the joserfc code the SDK signs with) with an AsyncClient bound to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest

from epic_fhir_async._http import HTTPSession
from epic_fhir_async.auth import EpicAuth, SigningKey, generate_private_key, public_jwks
from tests.conftest import BASE, FakeEpic, fast_sdk_retries


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token request's single retry of a transient failure waits 1 s; not in tests."""
    fast_sdk_retries(monkeypatch, 0.0)


class FakeClock:
    """A manual clock for the token manager (seconds)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return generate_private_key("RS384")


@pytest.fixture(scope="session")
def ec_key() -> SigningKey:
    return generate_private_key("ES384")


@pytest.fixture
def fake(rsa_key: SigningKey, ec_key: SigningKey) -> FakeEpic:
    return FakeEpic(public_jwks=public_jwks(rsa_key, ec_key))


Connect = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def connect(fake: FakeEpic) -> Connect:
    """``async with connect(auth) as http:`` an AsyncClient on the fake server, ``auth`` bound as the client does."""

    @asynccontextmanager
    async def _connect(auth: EpicAuth, base_url: str = BASE) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler), auth=auth) as client:
            auth.bind(HTTPSession(base_url, http_client=client))
            yield client

    return _connect
