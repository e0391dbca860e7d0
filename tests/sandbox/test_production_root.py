"""A production-style root (``/FHIRProxy/api/FHIR/R4``, token at ``/FHIRProxy/oauth2/token``) end to end over
raw HTTP, in-process and served on 127.0.0.1: every URL the sandbox hands out follows the root."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import CAMILA, DERRICK, JSON_ACCEPT

pytestmark = pytest.mark.anyio
GROUP = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"


async def walk_production_root(sb: EpicSandbox, http: httpx.AsyncClient, key: RSAKey) -> None:
    root = f"{sb.origin}/FHIRProxy"
    base = f"{root}/api/FHIR/R4"
    assert sb.base_url == base
    metadata = (await http.get(f"{base}/metadata", headers=JSON_ACCEPT)).json()
    uris = {e["url"]: e["valueUri"] for e in metadata["rest"][0]["security"]["extension"][0]["extension"]}
    assert uris == {"authorize": f"{root}/oauth2/authorize", "token": f"{root}/oauth2/token"}
    assert metadata["implementation"]["url"] == base
    smart = (await http.get(f"{base}/.well-known/smart-configuration")).json()
    assert smart["token_endpoint"] == f"{root}/oauth2/token"

    claims = {
        "iss": "prod",
        "sub": "prod",
        "aud": uris["token"],
        "jti": str(uuid.uuid4()),
        "exp": int(time.time()) + 240,
    }
    signed = jwt.encode({"alg": "RS384", "typ": "JWT", "kid": key.kid}, claims, key, algorithms=["RS384"])
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": signed,
    }
    issued = await http.post(uris["token"], data=form)
    assert issued.status_code == 200, sb.oauth.last_failure
    headers = {"Authorization": f"Bearer {issued.json()['access_token']}", **JSON_ACCEPT}

    assert (await http.get(f"{base}/Patient/{CAMILA}", headers=headers)).json()["id"] == CAMILA
    page = (
        await http.get(
            f"{base}/Observation",
            params={"patient": DERRICK, "category": "vital-signs", "_count": 50},
            headers=headers,
        )
    ).json()
    links = {link["relation"]: link["url"] for link in page["link"]}
    assert links["self"].startswith(f"{base}/Observation?")
    assert links["next"].startswith(f"{base}/Observation?sessionID=")
    assert page["entry"][0]["fullUrl"].startswith(f"{base}/Observation/")
    assert (await http.get(links["next"], headers=headers)).status_code == 200

    kick = await http.get(
        f"{base}/Group/{GROUP}/$export",
        params={"_type": "Patient"},
        headers={**headers, "Prefer": "respond-async"},
    )
    status_url = kick.headers["content-location"]
    assert status_url.startswith(f"{base}/BulkRequest/")
    manifest = (await http.get(status_url, headers=headers)).json()
    assert all(item["url"].startswith(f"{base}/BulkRequest/") for item in manifest["output"])
    ndjson = await http.get(manifest["output"][0]["url"], headers=headers)
    assert len(ndjson.content.splitlines()) == manifest["output"][0]["count"]

    directory = (await http.get(f"{sb.origin}/Endpoints/R4")).json()  # follows the origin, even when served
    assert directory["entry"][0]["resource"]["address"] == f"{base}/"

    # Epic's default layout is not there at all: IIS 404 pages, not FHIR.
    for path in ("/interconnect-fhir-oauth/api/FHIR/R4/metadata", "/interconnect-fhir-oauth/oauth2/token"):
        old = await http.get(f"{sb.origin}{path}", headers=headers)
        assert old.status_code == 404
        assert old.headers["content-type"].startswith("text/html")


@pytest.fixture(scope="module")
def key() -> RSAKey:
    generated: RSAKey = RSAKey.generate_key(2048, parameters={"kid": "prod-key"})
    return generated


def production_sandbox(key: RSAKey) -> EpicSandbox:
    sb = EpicSandbox(
        seed=0, patients=3, root_path="/FHIRProxy", origin="https://epic.example.test", export_seconds=0.0
    )
    sb.register_client("prod", {"keys": [key.as_dict(private=False)]})
    return sb


async def test_production_root_in_process(key: RSAKey) -> None:
    sb = production_sandbox(key)
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        await walk_production_root(sb, http, key)


async def test_production_root_served(key: RSAKey) -> None:
    sb = production_sandbox(key)
    async with sb.serve(port=0) as base_url:
        assert base_url.endswith("/FHIRProxy/api/FHIR/R4")
        async with httpx.AsyncClient(timeout=10) as http:
            await walk_production_root(sb, http, key)
    assert sb.base_url == "https://epic.example.test/FHIRProxy/api/FHIR/R4"
