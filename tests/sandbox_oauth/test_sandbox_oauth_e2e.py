"""End to end through the app helper's EpicSandbox with raw httpx (skipped until the app exists)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

pytestmark = pytest.mark.anyio


async def test_token_then_fhir_read_then_401(rsa_key: RSAKey) -> None:
    sandbox = pytest.importorskip("epic_fhir_async.sandbox")
    if not hasattr(sandbox, "EpicSandbox"):
        pytest.skip("EpicSandbox not written yet")
    sb = sandbox.EpicSandbox(seed=0, patients=2)
    sb.register_client("e2e", {"keys": [rsa_key.as_dict(private=False)]})
    now = int(sb.clock.now())
    claims = {
        "iss": "e2e",
        "sub": "e2e",
        "aud": sb.token_url,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 240,
    }
    assertion = jwt.encode(
        {"alg": "RS384", "kid": rsa_key.kid, "typ": "JWT"}, claims, rsa_key, algorithms=["RS384"]
    )
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        response = await http.post(
            sb.token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
        assert response.status_code == 200
        token = response.json()["access_token"]
        patient = "erXuFYUfucBZaryVksYEcMg3"
        ok = await http.get(
            f"{sb.base_url}/Patient/{patient}",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
        )
        assert ok.status_code == 200
        denied = await http.get(
            f"{sb.base_url}/Patient/{patient}", headers={"Accept": "application/fhir+json"}
        )
        assert denied.status_code == 401
        assert denied.content == b""
        assert 'error="invalid_token"' in denied.headers["www-authenticate"]
