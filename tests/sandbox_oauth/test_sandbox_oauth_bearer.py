"""Bearer checks on FHIR requests (epic-behaviour.md §3.7, checklist 14)."""

from __future__ import annotations

import pytest
from joserfc.jwk import RSAKey

from epic_fhir_async.sandbox._clock import SandboxClock
from epic_fhir_async.sandbox._http import Response
from epic_fhir_async.sandbox._oauth import BearerCheck, OAuthServer

from .conftest import public_jwks

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
    assert failure.body == b""
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


def test_issue_token_unknown_client(server: OAuthServer) -> None:
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
