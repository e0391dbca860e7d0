"""Code and refresh grants at the token endpoint."""

from __future__ import annotations

import httpx
import pytest
from joserfc.jwk import RSAKey

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import (
    CAMILA,
    REDIRECT,
    assertion,
    basic,
    code_for,
    code_form,
    json_body,
    read_patient,
    token,
)

pytestmark = pytest.mark.anyio
SECRET = "top-secret"


def assert_error(smart_sb: EpicSandbox, response: httpx.Response, error: str, reason: str) -> None:
    assert response.status_code == 400
    assert response.json() == {"error": error, "error_description": None}  # Epic's bare body
    assert smart_sb.oauth.last_failure == reason
    assert smart_sb.stats[f"token_failures:{reason}"] >= 1


@pytest.fixture
def public(smart_sb: EpicSandbox) -> str:
    smart_sb.register_app("pub", redirect_uris=[REDIRECT])
    return "pub"


@pytest.fixture
def confidential(smart_sb: EpicSandbox) -> str:
    smart_sb.register_app("conf", redirect_uris=[REDIRECT], client_secret=SECRET, persistent_access=True)
    return "conf"


async def test_code_is_single_use(smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, public: str) -> None:
    code, verifier = await code_for(smart_http, smart_sb, public)
    assert (await token(smart_http, smart_sb, code_form(code, verifier, client_id=public))).status_code == 200
    assert_error(
        smart_sb,
        await token(smart_http, smart_sb, code_form(code, verifier, client_id=public)),
        "invalid_grant",
        "reused_code",
    )
    assert smart_sb.stats["code_exchanges"] == 1


async def test_code_expires_on_the_sandbox_clock(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, public: str
) -> None:
    code, verifier = await code_for(smart_http, smart_sb, public)
    smart_sb.clock.advance(smart_sb.smart.code_lifetime)
    assert_error(
        smart_sb,
        await token(smart_http, smart_sb, code_form(code, verifier, client_id=public)),
        "invalid_grant",
        "expired_code",
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"code_verifier": "x" * 43}, "bad_code_verifier"),
        ({"code_verifier": "short"}, "bad_code_verifier"),
        ({"code_verifier": None}, "missing_code_verifier"),
        ({"redirect_uri": REDIRECT + "/other"}, "redirect_uri_mismatch"),
        ({"redirect_uri": None}, "redirect_uri_mismatch"),
        ({"code": "made-up"}, "unknown_code"),
    ],
)
async def test_code_exchange_checks(
    smart_sb: EpicSandbox,
    smart_http: httpx.AsyncClient,
    public: str,
    change: dict[str, str | None],
    reason: str,
) -> None:
    code, verifier = await code_for(smart_http, smart_sb, public)
    form = {k: v for k, v in (code_form(code, verifier, client_id=public) | change).items() if v is not None}
    assert_error(smart_sb, await token(smart_http, smart_sb, form), "invalid_grant", reason)
    if reason != "unknown_code":  # a failed attempt burns the code: the right verifier now fails too
        again = await token(smart_http, smart_sb, code_form(code, verifier, client_id=public))
        assert_error(smart_sb, again, "invalid_grant", "reused_code")


async def test_code_is_bound_to_its_client(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, public: str
) -> None:
    smart_sb.register_app("other", redirect_uris=[REDIRECT])
    code, verifier = await code_for(smart_http, smart_sb, public)
    response = await token(smart_http, smart_sb, code_form(code, verifier, client_id="other"))
    assert_error(smart_sb, response, "invalid_grant", "code_client_mismatch")


@pytest.mark.parametrize(
    ("headers", "extra", "reason"),
    [
        ({"Authorization": basic("conf", SECRET)}, {"client_id": "conf"}, "client_id_with_basic"),
        ({"Authorization": basic("conf", "wrong")}, {}, "bad_secret"),
        ({"Authorization": "Basic !!!not-base64"}, {}, "malformed_basic"),
        ({}, {"client_id": "conf"}, "missing_client_auth"),
        ({}, {"client_id": "nobody"}, "unknown_client"),
    ],
)
async def test_confidential_client_authentication(
    smart_sb: EpicSandbox,
    smart_http: httpx.AsyncClient,
    confidential: str,
    headers: dict[str, str],
    extra: dict[str, str],
    reason: str,
) -> None:
    code, verifier = await code_for(smart_http, smart_sb, confidential)
    response = await token(smart_http, smart_sb, code_form(code, verifier, **extra), headers=headers)
    assert_error(smart_sb, response, "invalid_client", reason)
    assert smart_sb.stats["tokens_issued"] == 0


async def test_client_secret_post_also_works(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, confidential: str
) -> None:
    code, verifier = await code_for(smart_http, smart_sb, confidential)
    response = await token(
        smart_http, smart_sb, code_form(code, verifier, client_id=confidential, client_secret=SECRET)
    )
    assert response.status_code == 200, smart_sb.oauth.last_failure


async def test_private_key_jwt_assertion_rules(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app_key: RSAKey
) -> None:
    smart_sb.register_app("jwt", redirect_uris=[REDIRECT], jwks={"keys": [app_key.as_dict(private=False)]})
    code, verifier = await code_for(smart_http, smart_sb, "jwt")
    signed = assertion(smart_sb, app_key, "jwt")
    assert_error(
        smart_sb,
        await token(smart_http, smart_sb, code_form(code, verifier, client_id="jwt")),
        "invalid_client",
        "missing_client_auth",
    )
    mismatch = code_form(code, verifier, client_id="someone-else") | signed
    assert_error(
        smart_sb, await token(smart_http, smart_sb, mismatch), "invalid_client", "client_id_mismatch"
    )
    assert (await token(smart_http, smart_sb, code_form(code, verifier) | signed)).status_code == 200
    code, verifier = await code_for(smart_http, smart_sb, "jwt")
    assert_error(
        smart_sb,
        await token(smart_http, smart_sb, code_form(code, verifier) | signed),
        "invalid_client",
        "replayed_jti",
    )


async def test_scope_drops_offline_access_and_refresh_follows_registration(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, public: str, confidential: str
) -> None:
    scope = "launch/patient patient/Patient.read offline_access"
    code, verifier = await code_for(smart_http, smart_sb, public, scope=scope)
    body = json_body(await token(smart_http, smart_sb, code_form(code, verifier, client_id=public)))
    assert body["scope"] == "launch/patient patient/Patient.read"
    assert "refresh_token" not in body  # public: never
    code, verifier = await code_for(smart_http, smart_sb, confidential, scope=scope)
    body = json_body(
        await token(
            smart_http, smart_sb, code_form(code, verifier), headers={"Authorization": basic("conf", SECRET)}
        )
    )
    assert body["scope"] == "launch/patient patient/Patient.read"  # not echoed, still granted (I-CJS138)
    assert body["refresh_token"]
    smart_sb.register_app("no-persist", redirect_uris=[REDIRECT], client_secret=SECRET)
    code, verifier = await code_for(smart_http, smart_sb, "no-persist", scope=scope)
    body = json_body(
        await token(
            smart_http,
            smart_sb,
            code_form(code, verifier),
            headers={"Authorization": basic("no-persist", SECRET)},
        )
    )
    assert "refresh_token" not in body


async def test_indefinite_refresh_keeps_one_token(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, confidential: str
) -> None:
    auth = {"Authorization": basic("conf", SECRET)}
    code, verifier = await code_for(smart_http, smart_sb, confidential)
    first = json_body(await token(smart_http, smart_sb, code_form(code, verifier), headers=auth))
    smart_sb.clock.advance(3600)  # the access token has expired...
    assert (await read_patient(smart_http, smart_sb, first["access_token"], CAMILA)).status_code == 401
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    for _ in range(2):
        smart_sb.clock.advance(30 * 86400)
        response = await token(smart_http, smart_sb, refresh, headers=auth)
        assert response.status_code == 200, smart_sb.oauth.last_failure
        body = json_body(response)
        assert set(body) == {"access_token", "token_type", "expires_in", "scope"}  # no launch context
        assert body["token_type"] == "Bearer"
        assert (await read_patient(smart_http, smart_sb, body["access_token"], CAMILA)).status_code == 200
    assert smart_sb.stats["refresh_exchanges"] == 2
    # Refresh tokens are bound to their client and need its authentication.
    smart_sb.register_app("thief", redirect_uris=[REDIRECT], client_secret=SECRET)
    stolen = await token(smart_http, smart_sb, refresh, headers={"Authorization": basic("thief", SECRET)})
    assert_error(smart_sb, stolen, "invalid_grant", "refresh_client_mismatch")
    assert_error(smart_sb, await token(smart_http, smart_sb, refresh), "invalid_client", "unknown_client")


async def test_rolling_refresh_rotates_and_keeps_the_first_expiry(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient
) -> None:
    smart_sb.register_app(
        "roll", redirect_uris=[REDIRECT], client_secret=SECRET, persistent_access=True, refresh_lifetime=7200
    )
    auth = {"Authorization": basic("roll", SECRET)}
    code, verifier = await code_for(smart_http, smart_sb, "roll")
    current = json_body(await token(smart_http, smart_sb, code_form(code, verifier), headers=auth))[
        "refresh_token"
    ]
    smart_sb.clock.advance(3600)
    body = json_body(
        await token(
            smart_http, smart_sb, {"grant_type": "refresh_token", "refresh_token": current}, headers=auth
        )
    )
    assert body["refresh_token"] != current  # a new refresh token each time (rolling refresh)
    old = await token(
        smart_http, smart_sb, {"grant_type": "refresh_token", "refresh_token": current}, headers=auth
    )
    assert_error(smart_sb, old, "invalid_grant", "unknown_refresh_token")
    current = body["refresh_token"]
    smart_sb.clock.advance(3599)
    body = json_body(
        await token(
            smart_http, smart_sb, {"grant_type": "refresh_token", "refresh_token": current}, headers=auth
        )
    )
    smart_sb.clock.advance(
        1
    )  # 7200 s after the code exchange: the authorization's end, whatever the rotation
    late = await token(
        smart_http,
        smart_sb,
        {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers=auth,
    )
    assert_error(smart_sb, late, "invalid_grant", "expired_refresh_token")


async def test_backend_grant_is_unchanged_and_other_grants_unsupported(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient
) -> None:
    response = await token(smart_http, smart_sb, {"grant_type": "password", "username": "x"})
    assert response.status_code == 400
    assert response.json() == {"error": "unsupported_grant_type", "error_description": None}
