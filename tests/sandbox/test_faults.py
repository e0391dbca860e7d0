"""Fault injection: 5xx, 429 + Retry-After, dropped connections, latency, token flakes."""

from __future__ import annotations

import email.utils
import time
import uuid

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import CAMILA

pytestmark = pytest.mark.anyio


async def test_error_rate_answers_5xx_and_counts(sb: EpicSandbox, http: httpx.AsyncClient) -> None:
    sb.faults.error_rate = 1.0
    statuses = {(await http.get(f"Patient/{CAMILA}")).status_code for _ in range(20)}
    assert statuses <= {500, 502, 503}
    assert len(statuses) > 1
    assert sb.stats["faults:error"] == 20
    sb.faults.error_rate = 0.0
    assert (await http.get(f"Patient/{CAMILA}")).status_code == 200


@pytest.mark.parametrize("http_date", [False, True])
async def test_rate_limit_gives_429_with_retry_after(
    sb: EpicSandbox, http: httpx.AsyncClient, http_date: bool
) -> None:
    sb.faults.rate_limit_rps = 3
    sb.faults.retry_after_http_date = http_date
    statuses = [(await http.get(f"Patient/{CAMILA}")) for _ in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    retry_after = statuses[3].headers["retry-after"]
    if http_date:
        assert email.utils.parsedate_to_datetime(retry_after).timestamp() > sb.clock.now()
    else:
        assert int(retry_after) >= 1
    assert sb.stats["faults:rate_limited"] == 2
    sb.clock.advance(1.0)
    assert (await http.get(f"Patient/{CAMILA}")).status_code == 200


async def test_drop_raises_httpx_error_in_process(sb: EpicSandbox, http: httpx.AsyncClient) -> None:
    sb.faults.drop_rate = 1.0
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get(f"Patient/{CAMILA}")
    assert sb.stats["faults:drop"] == 1


async def test_latency_is_added_and_counted(sb: EpicSandbox, http: httpx.AsyncClient) -> None:
    sb.faults.latency = 0.001
    assert (await http.get(f"Patient/{CAMILA}")).status_code == 200
    assert sb.stats["faults:latency"] == 1


def _assertion(key: RSAKey, client_id: str, token_url: str, now: float) -> str:
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "jti": str(uuid.uuid4()),
        "exp": int(now) + 240,
    }
    return jwt.encode({"alg": "RS384", "typ": "JWT", "kid": "k1"}, claims, key, algorithms=["RS384"])


async def test_token_endpoint_and_flakes_through_the_app() -> None:
    sb = EpicSandbox(seed=1, patients=5)  # real clock: the JWT library checks nothing here, the sandbox does
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    sb.register_client("backend", {"keys": [key.as_dict(private=False)]})
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    }
    async with httpx.AsyncClient(transport=sb.transport()) as raw:
        ok = await raw.post(
            sb.token_url,
            data={**form, "client_assertion": _assertion(key, "backend", sb.token_url, time.time())},
        )
        assert ok.status_code == 200
        token = ok.json()["access_token"]
        read = await raw.get(
            f"{sb.base_url}/Patient/{CAMILA}",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
        assert read.status_code == 200
        sb.faults.token_flake_rate = 1.0
        flaky = await raw.post(
            sb.token_url,
            data={**form, "client_assertion": _assertion(key, "backend", sb.token_url, time.time())},
        )
    assert flaky.status_code == 400
    assert sb.stats["token_requests"] == 2


async def test_drop_cuts_streamed_bulk_files(sb: EpicSandbox, http: httpx.AsyncClient) -> None:
    group = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"
    sb.bulk.export_seconds = 0.0
    kick = await http.get(
        f"Group/{group}/$export", params={"_type": "Patient"}, headers={"Prefer": "respond-async"}
    )
    manifest = (await http.get(kick.headers["content-location"])).json()
    sb.faults.drop_rate = 1.0
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get(manifest["output"][0]["url"])


async def test_production_style_root_path() -> None:
    sb = EpicSandbox(seed=0, patients=2, root_path="/FHIRProxy", origin="http://127.0.0.1:9000")
    assert sb.base_url == "http://127.0.0.1:9000/FHIRProxy/api/FHIR/R4"
    assert sb.token_url == "http://127.0.0.1:9000/FHIRProxy/oauth2/token"
    headers = {"Authorization": f"Bearer {sb.issue_token('c')}", "Accept": "application/json"}
    async with httpx.AsyncClient(transport=sb.transport(), headers=headers) as raw:
        assert (await raw.get(f"{sb.base_url}/Patient/{CAMILA}")).status_code == 200
        old = await raw.get(f"http://127.0.0.1:9000/interconnect-fhir-oauth/api/FHIR/R4/Patient/{CAMILA}")
    assert old.status_code == 404
