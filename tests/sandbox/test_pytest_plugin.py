"""The user-facing pytest plugin, exercised the way a user enables it: a conftest with pytest_plugins."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_CONFTEST = """
import pytest

pytest_plugins = ["epic_fhir_async.testing"]

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""

USER_TESTS = """
import pytest
from epic_fhir_async import EpicFHIRClient, NotFound
from epic_fhir_async.sandbox import EpicSandbox, SandboxConfig
from epic_fhir_async.testing import EPIC_TEST_CLIENT_ID

@pytest.mark.anyio
async def test_reads_camila(epic_client: EpicFHIRClient, epic_sandbox: EpicSandbox) -> None:
    patient = await epic_client.read("Patient", "erXuFYUfucBZaryVksYEcMg3")
    assert patient["name"][0]["family"] == "Lopez"
    assert epic_sandbox.stats["token_requests"] == 1  # a real Backend Services token request

@pytest.mark.anyio
async def test_epic_errors_reach_the_client(epic_client: EpicFHIRClient) -> None:
    with pytest.raises(NotFound) as info:
        await epic_client.read("Patient", "no-such-id")
    assert "59008" in info.value.operation_outcome.epic_codes

def test_each_test_gets_a_fresh_sandbox(epic_sandbox: EpicSandbox) -> None:
    assert epic_sandbox.faults.error_rate == 0.0
    assert epic_sandbox.oauth.allowed_types(EPIC_TEST_CLIENT_ID) is None

class TestOverride:
    @pytest.fixture
    def epic_sandbox_config(self) -> SandboxConfig:
        return SandboxConfig(seed=7, patients=3)

    def test_config_can_be_overridden(self, epic_sandbox: EpicSandbox) -> None:
        assert epic_sandbox.config.patients == 3
"""


def test_plugin_fixtures_work_for_a_user(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_inprocess("-W", "error", "-q")
    result.assert_outcomes(passed=6)  # two async tests on two backends, two sync tests
