"""Bearer checks on FHIR requests, on the OAuth server itself and end to end through the app with raw httpx (a
backend token, a FHIR read, then a 401 without it)."""

from __future__ import annotations

import httpx
import pytest
from joserfc.jwk import RSAKey

from epic_fhir_async.sandbox import EpicSandbox
from epic_fhir_async.sandbox._clock import SandboxClock
from epic_fhir_async.sandbox._http import Response
from epic_fhir_async.sandbox._oauth import BearerCheck, OAuthServer

from .conftest import CAMILA, claims, public_jwks, sign, token_form

INVALID = 'Bearer error="invalid_token", error_description="The access token provided is not valid"'
INSUFFICIENT = (
    'Bearer error="insufficient_scope", '
    'error_description="The access token provided is valid, but is not authorized for this service"'
)


def assert_failure(check: BearerCheck, status: int, challenge: str) -> None:
    assert check.client_id is None
    failure = check.failure
    assert isinstance(failure, Response)
    assert failure.status == status
    # Epic's 401 body is a JSON empty string; its 403s are empty: neither has an OperationOutcome.
    assert failure.body == (b'""' if status == 401 else b"")
    assert failure.header("content-type") == "application/json; charset=utf-8"
    assert failure.header("www-authenticate") == challenge


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer not-a-token"])
def test_missing_or_bad_token_is_401(server: OAuthServer, authorization: str | None) -> None:
    assert_failure(server.check_bearer(authorization, "Patient"), 401, INVALID)
    assert server.stats["bearer_failures"] == 1


def test_valid_token(server: OAuthServer) -> None:
    token = server.issue_token("client-a")
    check = server.check_bearer(f"Bearer {token}", "Observation")
    assert check == BearerCheck("client-a", None)
    assert server.check_bearer(f"bearer {token}", None).client_id == "client-a"


def test_expiry_on_sandbox_clock(server: OAuthServer, clock: SandboxClock) -> None:
    token = server.issue_token("client-a")
    short = server.issue_token("client-a", lifetime=10)
    clock.advance(11)
    assert_failure(server.check_bearer(f"Bearer {short}", "Patient"), 401, INVALID)
    assert server.check_bearer(f"Bearer {token}", "Patient").client_id == "client-a"
    clock.advance(3600)
    assert_failure(server.check_bearer(f"Bearer {token}", "Patient"), 401, INVALID)


def test_no_token_is_minted_for_an_unknown_client(server: OAuthServer) -> None:
    with pytest.raises(KeyError):
        server.issue_token("nobody")


def test_type_not_granted_is_403(server: OAuthServer, rsa_key: RSAKey) -> None:
    server.register_client(
        "narrow", public_jwks(rsa_key), resource_types=["Patient", "Observation?category=laboratory"]
    )
    token = f"Bearer {server.issue_token('narrow')}"
    assert server.check_bearer(token, "Patient").client_id == "narrow"
    assert server.check_bearer(token, "Observation").client_id == "narrow"  # a sub-type grants the type
    assert server.check_bearer(token, None).client_id == "narrow"  # bulk files etc.
    assert_failure(server.check_bearer(token, "Condition"), 403, INSUFFICIENT)
    assert_failure(server.check_bearer(token, "Obs"), 403, INSUFFICIENT)
    assert server.stats["bearer_failures"] == 2


# -- end to end through the app ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_token_then_fhir_read_then_401(rsa_key: RSAKey) -> None:
    sb = EpicSandbox(seed=0, patients=2)
    sb.register_client("e2e", {"keys": [rsa_key.as_dict(private=False)]})
    payload = claims("e2e", now=sb.clock.now(), aud=sb.token_url)
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        response = await http.post(sb.token_url, data=token_form(sign(rsa_key, payload)))
        assert response.status_code == 200
        token = response.json()["access_token"]
        fhir_json = {"Accept": "application/fhir+json"}
        ok = await http.get(
            f"{sb.base_url}/Patient/{CAMILA}", headers={"Authorization": f"Bearer {token}", **fhir_json}
        )
        assert ok.status_code == 200
        denied = await http.get(f"{sb.base_url}/Patient/{CAMILA}", headers=fhir_json)
        assert denied.status_code == 401
        assert denied.content == b'""'
        assert 'error="invalid_token"' in denied.headers["www-authenticate"]
