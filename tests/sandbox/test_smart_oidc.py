"""id_tokens, the OIDC key set and discovery documents."""

from __future__ import annotations

import base64
import hashlib

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet, RSAKey

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import (
    CAMILA,
    DERRICK,
    EHR_SCOPE,
    REDIRECT,
    SMART_NOW,
    authorize_params,
    basic,
    code_for,
    code_form,
    get_code,
    json_body,
    token,
)

pytestmark = pytest.mark.anyio


async def _published_keys(smart_http: httpx.AsyncClient, smart_sb: EpicSandbox) -> KeySet:
    config = (await smart_http.get(smart_sb.openid_configuration_url)).json()
    assert config["jwks_uri"] == smart_sb.jwks_url
    response = await smart_http.get(config["jwks_uri"])
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "RSA"
    assert keys[0]["alg"] == "RS256"
    assert not {"d", "p", "q"} & set(keys[0])
    keyset: KeySet = KeySet.import_key_set(response.json())
    return keyset


async def test_ehr_launch_id_token_verifies_against_the_published_jwks(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app_key: RSAKey
) -> None:
    smart_sb.register_app("oidc", redirect_uris=[REDIRECT], client_secret="s")
    launch = smart_sb.mint_launch(DERRICK, user="FHIRTWO")
    code, verifier = await code_for(
        smart_http,
        smart_sb,
        "oidc",
        scope=EHR_SCOPE + " openid fhirUser profile",
        launch=launch,
        nonce="n-0S6_WzA2Mj",
    )
    body = json_body(
        await token(
            smart_http, smart_sb, code_form(code, verifier), headers={"Authorization": basic("oidc", "s")}
        )
    )
    keys = await _published_keys(smart_http, smart_sb)
    decoded = jwt.decode(body["id_token"], keys, algorithms=["RS256"])
    assert decoded.header["alg"] == "RS256"
    assert decoded.header["typ"] == "JWT"
    # The kid is the base64 SHA-256 of the public key (standard, padded base64: 44 characters).
    published = keys.keys[0]
    assert isinstance(published, RSAKey)
    digest = base64.b64encode(hashlib.sha256(published.as_der(private=False)).digest()).decode()
    assert decoded.header["kid"] == digest
    assert len(digest) == 44
    claims = decoded.claims
    assert claims["iss"] == f"{smart_sb.origin}{smart_sb.config.root_path}/oauth2"
    assert claims["aud"] == "oidc"
    assert claims["iat"] == int(SMART_NOW)
    assert claims["exp"] == claims["iat"] + 300
    assert claims["nonce"] == "n-0S6_WzA2Mj"
    assert claims["sub"] == "exfo6E4EXjWsnhA1OGVElgw3"
    assert claims["fhirUser"] == f"{smart_sb.base_url}/Practitioner/exfo6E4EXjWsnhA1OGVElgw3"
    assert claims["preferred_username"] == "FHIRTWO"
    practitioner = await smart_http.get(
        claims["fhirUser"],
        headers={"Authorization": f"Bearer {body['access_token']}", "Accept": "application/fhir+json"},
    )
    assert practitioner.status_code == 200
    # A key that is not the sandbox's does not verify it.
    with pytest.raises(BadSignatureError):
        jwt.decode(body["id_token"], app_key, algorithms=["RS256"])


async def test_patient_facing_id_token_names_the_patient(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient
) -> None:
    smart_sb.register_app("mychart", redirect_uris=[REDIRECT])
    code, verifier = await code_for(
        smart_http, smart_sb, "mychart", scope="openid fhirUser launch/patient patient/Patient.read"
    )
    body = json_body(await token(smart_http, smart_sb, code_form(code, verifier, client_id="mychart")))
    claims = jwt.decode(
        body["id_token"], await _published_keys(smart_http, smart_sb), algorithms=["RS256"]
    ).claims
    assert claims["sub"] == CAMILA
    assert claims["fhirUser"] == f"{smart_sb.base_url}/Patient/{CAMILA}"
    assert "nonce" not in claims


async def test_openid_without_fhiruser_has_no_fhiruser_claim(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient
) -> None:
    smart_sb.register_app("plain", redirect_uris=[REDIRECT])
    params = authorize_params(smart_sb, "plain", None, scope="openid", aud="")
    code = await get_code(smart_http, smart_sb, params)
    body = json_body(await token(smart_http, smart_sb, code_form(code, None, client_id="plain")))
    claims = jwt.decode(
        body["id_token"], await _published_keys(smart_http, smart_sb), algorithms=["RS256"]
    ).claims
    assert "fhirUser" not in claims
    assert claims["sub"] == "evNp-KhYwOOqAZn1pZ2enuA3"
    assert "patient" not in body  # provider standalone: no patient context


async def test_discovery_documents(smart_sb: EpicSandbox, smart_http: httpx.AsyncClient) -> None:
    oauth = f"{smart_sb.origin}{smart_sb.config.root_path}/oauth2"
    config = (await smart_http.get(smart_sb.openid_configuration_url)).json()
    assert config["issuer"] == oauth
    assert config["authorization_endpoint"] == smart_sb.authorize_url == f"{oauth}/authorize"
    assert config["token_endpoint"] == smart_sb.token_url
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]
    assert config["response_types_supported"] == ["code"]
    # Epic also serves it under the FHIR base (Aug 2021+), without a token.
    assert (await smart_http.get(f"{smart_sb.base_url}/.well-known/openid-configuration")).json() == config
    smart = (await smart_http.get(f"{smart_sb.base_url}/.well-known/smart-configuration")).json()
    assert smart["authorization_endpoint"] == smart_sb.authorize_url
    assert smart["token_endpoint"] == smart_sb.token_url
    assert smart["jwks_uri"] == smart_sb.jwks_url
    # Epic's production servers list the three methods in this order (docs/epic-notes.md §2.1).
    assert smart["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ]
    assert smart["code_challenge_methods_supported"] == ["S256"]
    assert smart["capabilities"] == [
        "authorize-post",
        "client-confidential-asymmetric",
        "client-confidential-symmetric",
        "client-public",
        "context-banner",
        "context-ehr-encounter",
        "context-ehr-patient",
        "context-standalone-patient",
        "context-style",
        "launch-ehr",
        "launch-standalone",
        "permission-offline",
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2",
        "sso-openid-connect",
    ]
    metadata = (
        await smart_http.get(f"{smart_sb.base_url}/metadata", headers={"Accept": "application/fhir+json"})
    ).json()
    uris = {e["url"]: e["valueUri"] for e in metadata["rest"][0]["security"]["extension"][0]["extension"]}
    assert uris["authorize"] == smart_sb.authorize_url
    assert uris["token"] == smart_sb.token_url


def test_urls_follow_the_origin(smart_sb: EpicSandbox) -> None:
    smart_sb.origin = "http://127.0.0.1:9999"  # what serve() does with the real port
    assert smart_sb.authorize_url == "http://127.0.0.1:9999/interconnect-fhir-oauth/oauth2/authorize"
    assert smart_sb.openid_configuration_url.startswith(
        "http://127.0.0.1:9999/interconnect-fhir-oauth/oauth2/"
    )
    assert smart_sb.jwks_url.startswith("http://127.0.0.1:9999/interconnect-fhir-oauth/api/epic/")
