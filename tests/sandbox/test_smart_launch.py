"""Both launches end to end with raw httpx: standalone (public client) and EHR (secret and private_key_jwt)."""

from __future__ import annotations

import base64

import httpx
import pytest
from joserfc.jwk import RSAKey

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import (
    CAMILA,
    DERRICK,
    DERRICK_ENCOUNTER,
    EHR_SCOPE,
    REDIRECT,
    assertion,
    authorize_params,
    code_for,
    code_form,
    get_code,
    json_body,
    pkce,
    read_patient,
    token,
)

pytestmark = pytest.mark.anyio


async def test_standalone_launch_public_client(smart_sb: EpicSandbox, smart_http: httpx.AsyncClient) -> None:
    smart_sb.register_app("public-app", redirect_uris=[REDIRECT])
    verifier, challenge = pkce()
    params = authorize_params(smart_sb, "public-app", challenge)
    code = await get_code(smart_http, smart_sb, params)
    assert len(code) > 400
    assert code.count(".") == 2
    response = await token(smart_http, smart_sb, code_form(code, verifier, client_id="public-app"))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = json_body(response)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == params["scope"]
    assert body["state"] == params["state"]
    assert body["patient"] == CAMILA
    assert body["__epic.dstu2.patient"] == "TnOZ.elPXC6zcBNFMcFA7A5KZbYxo2.4T-LylRk4GoW4B"
    assert body["need_patient_banner"] == "true"
    assert "encounter" not in body
    assert "refresh_token" not in body  # public clients never get one
    assert "id_token" not in body  # no openid scope
    style = await smart_http.get(body["smart_style_url"])
    assert style.status_code == 200
    assert "color_background" in style.json()
    read = await read_patient(smart_http, smart_sb, body["access_token"], CAMILA)
    assert read.status_code == 200
    assert read.json()["id"] == CAMILA
    assert smart_sb.stats["authorize_requests"] == 1
    assert smart_sb.stats["code_exchanges"] == 1


async def test_ehr_launch_confidential_secret_client(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient
) -> None:
    smart_sb.register_app("ehr-app", redirect_uris=[REDIRECT], client_secret="s3cret/with:chars")
    launch = smart_sb.mint_launch(
        DERRICK, encounter=DERRICK_ENCOUNTER, context={"location": "e4W4rmGe9QzuGm2Dy4NBqVc0KDe6yvT4a"}
    )
    assert len(launch) > 500
    verifier, challenge = pkce()
    # POST authorize is allowed for EHR launches (it avoids URL length limits).
    params = authorize_params(smart_sb, "ehr-app", challenge, scope=EHR_SCOPE, launch=launch)
    response = await smart_http.post(smart_sb.authorize_url, data=params)
    assert response.status_code == 302
    code = dict(httpx.URL(response.headers["location"]).params)["code"]
    # Basic with the URL-encoded id and secret, and no client_id in the body.
    auth = "Basic " + base64.b64encode(b"ehr-app:s3cret%2Fwith%3Achars").decode()
    response = await token(smart_http, smart_sb, code_form(code, verifier), headers={"Authorization": auth})
    assert response.status_code == 200, smart_sb.oauth.last_failure
    body = json_body(response)
    assert body["patient"] == DERRICK
    assert body["encounter"] == DERRICK_ENCOUNTER
    assert body["location"] == "e4W4rmGe9QzuGm2Dy4NBqVc0KDe6yvT4a"
    assert body["need_patient_banner"] == "false"  # a string, and false inside Hyperspace
    assert body["state"] == params["state"]
    assert "refresh_token" not in body  # no persistent access registered
    assert (await read_patient(smart_http, smart_sb, body["access_token"], DERRICK)).status_code == 200


async def test_ehr_launch_private_key_jwt_client(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app_key: RSAKey
) -> None:
    smart_sb.register_app(
        "jwt-app",
        redirect_uris=[REDIRECT],
        jwks={"keys": [app_key.as_dict(private=False)]},
        persistent_access=True,
    )
    launch = smart_sb.mint_launch(CAMILA, user="FHIR")
    code, verifier = await code_for(smart_http, smart_sb, "jwt-app", scope=EHR_SCOPE, launch=launch)
    response = await token(
        smart_http, smart_sb, code_form(code, verifier) | assertion(smart_sb, app_key, "jwt-app")
    )
    assert response.status_code == 200, smart_sb.oauth.last_failure
    body = json_body(response)
    assert body["patient"] == CAMILA
    assert "encounter" not in body
    assert body["refresh_token"]  # persistent access, confidential
    assert (await read_patient(smart_http, smart_sb, body["access_token"], CAMILA)).status_code == 200


async def test_app_resource_types_apply_to_its_tokens(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient
) -> None:
    smart_sb.register_app("obs-only", redirect_uris=[REDIRECT], resource_types=["Observation"])
    code, verifier = await code_for(smart_http, smart_sb, "obs-only")
    body = json_body(await token(smart_http, smart_sb, code_form(code, verifier, client_id="obs-only")))
    assert (await read_patient(smart_http, smart_sb, body["access_token"], CAMILA)).status_code == 403
    smart_sb.clock.advance(3600)  # tokens from these grants expire like backend tokens (401 after expires_in)
    assert (await read_patient(smart_http, smart_sb, body["access_token"], CAMILA)).status_code == 401


def test_register_app_rejects_contradictions(smart_sb: EpicSandbox, app_key: RSAKey) -> None:
    jwks = {"keys": [app_key.as_dict(private=False)]}
    with pytest.raises(ValueError, match="public clients"):
        smart_sb.register_app("p", redirect_uris=[REDIRECT], persistent_access=True)
    with pytest.raises(ValueError, match="not both"):
        smart_sb.register_app("p", redirect_uris=[REDIRECT], client_secret="x", jwks=jwks)
    with pytest.raises(ValueError, match="fragment"):
        smart_sb.register_app("p", redirect_uris=["https://app.example.org/cb#frag"])
    with pytest.raises(ValueError, match="redirect_uris"):
        smart_sb.register_app("p", redirect_uris=REDIRECT)
    with pytest.raises(ValueError, match="refresh_lifetime"):
        smart_sb.register_app("p", redirect_uris=[REDIRECT], client_secret="x", refresh_lifetime=60)
    with pytest.raises(ValueError, match="unknown patient"):
        smart_sb.mint_launch("nobody")
    with pytest.raises(ValueError, match="FHIRTWO"):
        smart_sb.mint_launch(CAMILA, user="NOT-A-USER")
