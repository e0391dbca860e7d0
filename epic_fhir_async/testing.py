"""pytest fixtures for code that uses epic_fhir_async: an in-process Epic sandbox and a client connected to it.

Enable them in your ``conftest.py`` (nothing loads them behind your back)::

    pytest_plugins = ["epic_fhir_async.testing"]

    @pytest.mark.anyio
    async def test_reads_camila(epic_client: EpicFHIRClient) -> None:
        patient = await epic_client.read("Patient", "erXuFYUfucBZaryVksYEcMg3")
        assert patient["name"][0]["family"] == "Lopez"

The fixtures:

- ``epic_sandbox_config``: the :class:`~epic_fhir_async.sandbox.SandboxConfig` each test's sandbox is built
  from (seed 0, 20 generated patients). Override this fixture to change it for a module or a directory.
- ``epic_sandbox``: a fresh :class:`~epic_fhir_async.sandbox.EpicSandbox` per test, so faults, clock and
  counters set by one test never leak into another. Set ``epic_sandbox.faults`` to inject errors.
- ``epic_signing_key``: one RS384 key generated per test session, in memory only (never written to disk).
- ``epic_backend_auth``: a :class:`~epic_fhir_async.BackendServicesAuth` for the client id
  ``EPIC_TEST_CLIENT_ID``, whose public key the sandbox knows: it does the real signed-JWT token request.
- ``epic_client``: an :class:`~epic_fhir_async.EpicFHIRClient` on the sandbox's in-process transport (no
  socket, works on asyncio and trio), closed after the test. Async: use it from ``anyio``-marked tests.

The plugin defines no ``anyio_backend`` fixture, so anyio's default applies and async tests run on asyncio
only. To run them on trio as well, define it in your ``conftest.py``::

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(request: pytest.FixtureRequest) -> str:
        return request.param

Importing this module imports pytest; the package itself never imports it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ._client import EpicFHIRClient
from .auth import BackendServicesAuth, SigningKey, generate_private_key, public_jwks
from .sandbox import EpicSandbox, SandboxConfig

__all__ = [
    "EPIC_TEST_CLIENT_ID",
    "epic_backend_auth",
    "epic_client",
    "epic_sandbox",
    "epic_sandbox_config",
    "epic_signing_key",
]

#: The backend client id the fixtures register with the sandbox.
EPIC_TEST_CLIENT_ID = "epic-fhir-async-tests"


@pytest.fixture
def epic_sandbox_config() -> SandboxConfig:
    """A small, deterministic sandbox: Epic's named test patients plus 20 generated ones."""
    return SandboxConfig(seed=0, patients=20)


@pytest.fixture(scope="session")
def epic_signing_key() -> SigningKey:
    """An RS384 key for the whole session: RSA generation costs tens of milliseconds, so make it once."""
    return generate_private_key("RS384")


@pytest.fixture
def epic_sandbox(epic_sandbox_config: SandboxConfig, epic_signing_key: SigningKey) -> EpicSandbox:
    """A fresh sandbox per test with ``EPIC_TEST_CLIENT_ID`` registered (its public JWKS only)."""
    sandbox = EpicSandbox(epic_sandbox_config)
    sandbox.register_client(EPIC_TEST_CLIENT_ID, public_jwks(epic_signing_key))
    return sandbox


@pytest.fixture
def epic_backend_auth(epic_sandbox: EpicSandbox, epic_signing_key: SigningKey) -> BackendServicesAuth:
    """SMART Backend Services auth against the sandbox's token endpoint (tokens follow the sandbox clock)."""
    return BackendServicesAuth(
        EPIC_TEST_CLIENT_ID,
        epic_signing_key,
        token_url=epic_sandbox.token_url,
        wall_clock=epic_sandbox.clock.now,
    )


@pytest.fixture
async def epic_client(
    epic_sandbox: EpicSandbox, epic_backend_auth: BackendServicesAuth
) -> AsyncIterator[EpicFHIRClient]:
    """A client wired to the sandbox in-process; every request goes through the real auth and retry layers."""
    async with EpicFHIRClient(
        epic_sandbox.base_url, auth=epic_backend_auth, transport=epic_sandbox.transport()
    ) as client:
        yield client
