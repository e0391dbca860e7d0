"""Epic's 401 and 403 carry no OperationOutcome (the 401 body is the two bytes ``""`` with a JSON content type,
docs/epic-notes.md §3.7): the SDK explains them from ``WWW-Authenticate``, checked against the emulator, which
answers them as Epic does."""

from __future__ import annotations

import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, Forbidden, StaticTokenAuth, Unauthorized
from epic_fhir_async.auth import generate_private_key, public_jwks
from epic_fhir_async.sandbox import EpicSandbox

pytestmark = pytest.mark.anyio

CAMILA = "erXuFYUfucBZaryVksYEcMg3"


async def test_a_401_with_epics_json_empty_string_is_explained_as_invalid_token() -> None:
    sb = EpicSandbox(seed=0, patients=1)
    async with httpx.AsyncClient(transport=sb.transport()) as raw:
        wire = await raw.get(
            f"{sb.base_url}/Patient/{CAMILA}",
            headers={"Authorization": "Bearer not-a-token", "Accept": "application/fhir+json"},
        )
    assert (wire.status_code, wire.content, wire.headers["content-type"]) == (
        401,
        b'""',
        "application/json; charset=utf-8",
    )
    async with EpicFHIRClient(
        sb.base_url, auth=StaticTokenAuth("not-a-token"), transport=sb.transport()
    ) as c:
        with pytest.raises(Unauthorized) as info:
            await c.read("Patient", CAMILA)
    assert "invalid_token" in str(info.value)
    assert "non-FHIR body" not in str(info.value)
    assert info.value.operation_outcome is None
    assert info.value.www_authenticate["error"] == "invalid_token"
    assert "not-a-token" not in str(info.value)


async def test_a_403_without_an_outcome_is_explained_as_insufficient_scope() -> None:
    sb = EpicSandbox(seed=0, patients=1)
    sb.register_client(
        "patients-only", public_jwks(generate_private_key("ES256")), resource_types=["Patient"]
    )
    token = sb.issue_token("patients-only")
    async with EpicFHIRClient(sb.base_url, auth=StaticTokenAuth(token), transport=sb.transport()) as c:
        with pytest.raises(Forbidden) as info:
            await c.search("Condition", patient=CAMILA).first()
    assert "insufficient_scope" in str(info.value)
    assert "Incoming API" in str(info.value)
    assert info.value.operation_outcome is None
