"""A token endpoint that answers ``expires_in`` of 0 (or below) must not cost one token request per request,
each waiting behind the previous one on the manager's lock: tokens live at least ``MIN_TOKEN_LIFETIME`` (1 s),
so a grant asks for about one token a second at most (SECURITY.md promise 13)."""

from __future__ import annotations

import anyio
import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, RetryPolicy
from epic_fhir_async.auth import ClientSecretAuth

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"


@pytest.mark.parametrize("expires_in", [0, -30, "0.001"])
async def test_a_token_that_expires_at_once_is_not_fetched_per_request(expires_in: object) -> None:
    tokens = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal tokens
        if request.url.path.endswith("/token"):
            tokens += 1
            body = {
                "access_token": f"tok-{tokens:04d}-abcdefgh",
                "token_type": "bearer",
                "expires_in": expires_in,
            }
            return httpx.Response(200, json=body)
        return httpx.Response(200, json={"resourceType": "Patient", "id": "p"})

    auth = ClientSecretAuth("app", "client-secret-value", token_url="https://fhir.example.org/oauth2/token")
    client = EpicFHIRClient(
        BASE, auth=auth, transport=httpx.MockTransport(handler), retry=RetryPolicy(max_attempts=1)
    )
    async with client, anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(client.read, "Patient", "p")
    assert tokens == 1  # fifty requests within well under a second: one token
