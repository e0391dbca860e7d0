"""A Backend Services client's whole walk, in-process with raw httpx and joserfc: token, reads, paging, errors,
$export."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import CAMILA, DERRICK

pytestmark = pytest.mark.anyio
GROUP = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"


async def test_backend_client_walk_and_group_export() -> None:
    sb = EpicSandbox(seed=3, patients=10, export_seconds=0.0)
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    sb.register_client("my-client", {"keys": [key.as_dict(private=False)]})
    now = int(time.time())
    claims = {
        "iss": "my-client",
        "sub": "my-client",
        "aud": sb.token_url,
        "jti": uuid.uuid4().hex,
        "exp": now + 240,
    }
    assertion = jwt.encode({"alg": "RS384", "kid": "k1", "typ": "JWT"}, claims, key, algorithms=["RS384"])
    async with httpx.AsyncClient(transport=sb.transport()) as raw:
        token_response = await raw.post(
            sb.token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
        assert token_response.status_code == 200
        token = token_response.json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        json_headers = {**auth, "Accept": "application/fhir+json"}

        assert (await raw.get(f"{sb.base_url}/Patient/{CAMILA}", headers=json_headers)).json()["id"] == CAMILA
        xml = await raw.get(f"{sb.base_url}/Patient/{CAMILA}", headers=auth)
        assert xml.headers["content-type"].startswith("application/xml")
        no_token = await raw.get(
            f"{sb.base_url}/Patient/{CAMILA}", headers={"Accept": "application/fhir+json"}
        )
        assert no_token.status_code == 401
        assert no_token.content == b'""'  # Epic's 401 body: a JSON empty string
        bad = await raw.get(f"{sb.base_url}/Observation", params={"patient": DERRICK}, headers=json_headers)
        assert bad.status_code == 400
        assert (await raw.get(f"{sb.base_url}/Patient/nope", headers=json_headers)).status_code == 404
        html = await raw.get(f"{sb.base_url}/NotAType/1", headers=json_headers)
        assert html.headers["content-type"].startswith("text/html")

        params = {"patient": DERRICK, "category": "vital-signs"}
        counted = await raw.get(
            f"{sb.base_url}/Observation", params={**params, "_summary": "count"}, headers=json_headers
        )
        total = counted.json()["total"]
        seen = 0
        next_url: str | None = None
        pages = 0
        while True:
            if next_url is None:
                page = (
                    await raw.get(f"{sb.base_url}/Observation", params=params, headers=json_headers)
                ).json()
            else:
                page = (await raw.get(next_url, headers=json_headers)).json()
            pages += 1
            seen += sum(1 for e in page["entry"] if e["search"]["mode"] == "match")
            next_url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
            if next_url is None:
                break
        assert pages >= 2
        assert seen == total

        kick = await raw.get(
            f"{sb.base_url}/Group/{GROUP}/$export",
            params={"_type": "Patient,Observation"},
            headers={**json_headers, "Prefer": "respond-async"},
        )
        assert kick.status_code == 202
        status_url = kick.headers["content-location"]
        assert status_url.startswith(f"{sb.base_url}/BulkRequest/")
        manifest_response = await raw.get(status_url, headers=json_headers)
        assert manifest_response.status_code == 200
        manifest = manifest_response.json()
        assert manifest["requiresAccessToken"] is True
        assert {o["type"] for o in manifest["output"]} == {"Patient", "Observation"}
        for item in manifest["output"]:
            assert (await raw.get(item["url"])).status_code == 401
            ndjson = await raw.get(item["url"], headers=auth)
            assert ndjson.status_code == 200
            assert len(ndjson.content.splitlines()) == item["count"]
    assert sb.stats["bulk_requests"] >= 1 + 2 * len(manifest["output"])
    assert sb.stats["token_requests"] == 1
