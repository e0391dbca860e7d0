"""Client assertions tolerate a host clock a little off Epic's, in the safe direction (docs/epic-notes.md
§1.4): ``iat``/``nbf`` dated 30 s back, ``exp`` 240 s ahead, checked by the emulator's token endpoint, which
refuses an ``iat`` more than 5 s in its future as Epic refuses one in its future."""

from __future__ import annotations

import pytest

from epic_fhir_async import ConfigurationError, EpicFHIRClient, TokenRequestError
from epic_fhir_async.auth import (
    BackendServicesAuth,
    build_client_assertion,
    generate_private_key,
    public_jwks,
)
from epic_fhir_async.sandbox import EpicSandbox, SandboxClock

pytestmark = pytest.mark.anyio

EPIC_NOW = 1_780_000_000.0
CAMILA = "erXuFYUfucBZaryVksYEcMg3"


async def _read_with_host_clock_off_by(seconds: float) -> EpicSandbox:
    sb = EpicSandbox(seed=0, patients=1, clock=SandboxClock(frozen_at=EPIC_NOW))
    key = generate_private_key("RS384")
    sb.register_client("skewed", public_jwks(key))
    auth = BackendServicesAuth(
        "skewed", key, token_url=sb.token_url, wall_clock=lambda: EPIC_NOW + seconds, clock=sb.clock.now
    )
    async with EpicFHIRClient(sb.base_url, auth=auth, transport=sb.transport()) as client:
        await client.read("Patient", CAMILA)
    return sb


@pytest.mark.parametrize("seconds", [20, 29, -200, -239])
async def test_a_host_clock_somewhat_off_epics_still_gets_a_token(seconds: float) -> None:
    # Ahead by 20 s: an iat of "now" would be 20 s in Epic's future (refused, invalid_client); dated 30 s back
    # it is 10 s in Epic's past. Behind by 200 s: exp is still 40 s ahead of Epic's clock.
    sb = await _read_with_host_clock_off_by(seconds)
    assert sb.stats["tokens_issued"] == 1
    assert not sb.oauth.failures


@pytest.mark.parametrize(("seconds", "reason"), [(45, "nbf_in_future"), (-245, "expired")])
async def test_beyond_the_tolerance_epic_refuses(seconds: float, reason: str) -> None:
    sb = EpicSandbox(seed=0, patients=1, clock=SandboxClock(frozen_at=EPIC_NOW))
    key = generate_private_key("RS384")
    sb.register_client("skewed", public_jwks(key))
    auth = BackendServicesAuth("skewed", key, token_url=sb.token_url, wall_clock=lambda: EPIC_NOW + seconds)
    async with EpicFHIRClient(sb.base_url, auth=auth, transport=sb.transport()) as client:
        with pytest.raises(TokenRequestError, match="invalid_client"):
            await client.read("Patient", CAMILA)
    assert set(sb.oauth.failures) == {reason}


def test_the_skew_and_lifetime_stay_within_epics_300_seconds() -> None:
    key = generate_private_key("RS384")
    with pytest.raises(ConfigurationError, match="clock_skew"):
        build_client_assertion(
            key, client_id="c", audience="https://t.example/token", lifetime=280, clock_skew=30
        )
    with pytest.raises(ConfigurationError, match="clock_skew"):
        build_client_assertion(key, client_id="c", audience="https://t.example/token", clock_skew=-1)
    build_client_assertion(
        key, client_id="c", audience="https://t.example/token", lifetime=290, clock_skew=10
    )
