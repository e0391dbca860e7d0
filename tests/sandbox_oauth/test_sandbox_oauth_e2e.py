"""The OAuth server inside the app, end to end with raw httpx: a backend token, a FHIR read, then 401 without it."""

from __future__ import annotations

import httpx
import pytest
from joserfc.jwk import RSAKey

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import claims, sign, token_form

pytestmark = pytest.mark.anyio
CAMILA = "erXuFYUfucBZaryVksYEcMg3"


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
        assert denied.content == b""
        assert 'error="invalid_token"' in denied.headers["www-authenticate"]
