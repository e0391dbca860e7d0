"""Dynamic client registration and the JWT-bearer grant."""

from __future__ import annotations

import re

import httpx
import pytest
from joserfc.jwk import RSAKey

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import (
    CAMILA,
    REDIRECT,
    assertion,
    code_for,
    code_form,
    json_body,
    read_patient,
    token,
)

pytestmark = pytest.mark.anyio
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


async def _initial_token(smart_http: httpx.AsyncClient, smart_sb: EpicSandbox) -> str:
    smart_sb.register_app("mobile-app", redirect_uris=[REDIRECT])
    code, verifier = await code_for(smart_http, smart_sb, "mobile-app")
    body = json_body(await token(smart_http, smart_sb, code_form(code, verifier, client_id="mobile-app")))
    return str(body["access_token"])


async def _register(
    smart_http: httpx.AsyncClient, smart_sb: EpicSandbox, initial: str, body: dict[str, object]
) -> httpx.Response:
    return await smart_http.post(
        f"{smart_sb.oauth_url}/register", json=body, headers={"Authorization": f"Bearer {initial}"}
    )


async def test_register_then_jwt_bearer_grant(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app_key: RSAKey
) -> None:
    initial = await _initial_token(smart_http, smart_sb)
    jwks = {"keys": [app_key.as_dict(private=False)]}
    response = await _register(smart_http, smart_sb, initial, {"software_id": "mobile-app", "jwks": jwks})
    assert response.status_code == 201
    registered = response.json()
    client_id = registered["client_id"]
    assert re.fullmatch(r"G[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}", client_id)
    assert registered["token_endpoint_auth_method"] == "none"
    assert registered["grant_types"] == [JWT_BEARER]
    assert registered["software_id"] == "mobile-app"
    assert registered["redirect_uris"] == [REDIRECT]
    # The initial access token is one-time.
    assert (
        await _register(smart_http, smart_sb, initial, {"software_id": "mobile-app", "jwks": jwks})
    ).status_code == 401
    signed = assertion(smart_sb, app_key, client_id)["client_assertion"]
    grant = {"grant_type": JWT_BEARER, "assertion": signed, "client_id": client_id}
    response = await token(smart_http, smart_sb, grant)
    assert response.status_code == 200, smart_sb.oauth.last_failure
    body = json_body(response)
    assert body["patient"] == CAMILA  # the user bound at registration
    assert body["token_type"] == "Bearer"
    assert (await read_patient(smart_http, smart_sb, body["access_token"], CAMILA)).status_code == 200
    replay = await token(smart_http, smart_sb, grant)
    assert replay.status_code == 400
    assert replay.json() == {"error": "invalid_grant", "error_description": None}
    assert smart_sb.oauth.last_failure == "replayed_jti"


async def test_registration_needs_matching_software_id_and_public_keys(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app_key: RSAKey
) -> None:
    initial = await _initial_token(smart_http, smart_sb)
    jwks = {"keys": [app_key.as_dict(private=False)]}
    wrong = await _register(smart_http, smart_sb, initial, {"software_id": "another-app", "jwks": jwks})
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_client_metadata"
    private = await _register(
        smart_http,
        smart_sb,
        initial,
        {"software_id": "mobile-app", "jwks": {"keys": [app_key.as_dict(private=True)]}},
    )
    assert private.status_code == 400
    assert (
        await _register(smart_http, smart_sb, "not-a-token", {"software_id": "mobile-app", "jwks": jwks})
    ).status_code == 401
    unknown = await token(
        smart_http,
        smart_sb,
        {
            "grant_type": JWT_BEARER,
            "assertion": assertion(smart_sb, app_key, "G-unknown")["client_assertion"],
        },
    )
    assert unknown.status_code == 400
    assert smart_sb.oauth.last_failure == "unknown_client"
