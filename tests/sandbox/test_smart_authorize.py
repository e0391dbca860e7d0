"""``/oauth2/authorize``: each of Epic's rules, the login page, denial."""

from __future__ import annotations

import re

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import (
    CAMILA,
    DERRICK,
    EHR_SCOPE,
    REDIRECT,
    authorize_params,
    code_form,
    error_code,
    json_body,
    pkce,
    redirect_query,
    token,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def app(smart_sb: EpicSandbox) -> str:
    smart_sb.register_app("app", redirect_uris=[REDIRECT, "http://localhost:8000/cb"])
    return "app"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"client_id": "nobody"}, "unknown_client"),
        ({"redirect_uri": ""}, "missing_redirect_uri"),
        ({"redirect_uri": REDIRECT + "/"}, "redirect_uri_mismatch"),  # exact: a trailing slash fails
        ({"redirect_uri": REDIRECT.upper()}, "redirect_uri_mismatch"),  # case-sensitive
        ({"redirect_uri": "https://evil.example.org/cb"}, "redirect_uri_mismatch"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": ""}, "missing_scope"),
        ({"aud": ""}, "missing_aud"),
        ({"aud": "https://fhir.epic.com/interconnect-fhir-oauth/api/FHIR/R4"}, "invalid_aud"),
        ({"code_challenge_method": "plain"}, "unsupported_code_challenge_method"),
        ({"code_challenge_method": ""}, "missing_code_challenge_method"),
        ({"code_challenge": "too-short"}, "bad_code_challenge"),
        ({"scope": "launch openid"}, "launch_scope_without_launch"),
        ({"launch": "not-a-launch-token"}, "invalid_launch_token"),
    ],
)
async def test_bad_requests_get_the_html_error_page_never_a_redirect(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app: str, change: dict[str, str], reason: str
) -> None:
    _, challenge = pkce()
    params = authorize_params(smart_sb, app, challenge) | change
    response = await smart_http.get(
        smart_sb.authorize_url, params={k: v for k, v in params.items() if v != ""}
    )
    assert "location" not in response.headers
    assert error_code(response) == reason
    assert smart_sb.oauth.last_failure == reason
    assert smart_sb.stats[f"authorize_failures:{reason}"] == 1
    assert smart_sb.stats["auth_codes_issued"] == 0


async def test_aud_may_be_omitted_for_a_pure_openid_login(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app: str
) -> None:
    # The aud parameter is required with launch context scopes, not for a plain OIDC standalone login.
    _, challenge = pkce()
    params = authorize_params(smart_sb, app, challenge, scope="openid fhirUser", aud="")
    assert "code" in redirect_query(await smart_http.get(smart_sb.authorize_url, params=params))


async def test_pkce_is_optional_unless_required(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app: str
) -> None:
    params = authorize_params(smart_sb, app, None)
    assert "code" in redirect_query(await smart_http.get(smart_sb.authorize_url, params=params))
    smart_sb.smart.require_pkce = True
    assert error_code(await smart_http.get(smart_sb.authorize_url, params=params)) == "pkce_required"


async def test_state_is_echoed_and_optional(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app: str
) -> None:
    _, challenge = pkce()
    params = authorize_params(smart_sb, app, challenge, state="opaque state/with spaces&=")
    assert (
        redirect_query(await smart_http.get(smart_sb.authorize_url, params=params))["state"]
        == "opaque state/with spaces&="
    )
    del params["state"]
    assert "state" not in redirect_query(await smart_http.get(smart_sb.authorize_url, params=params))


async def test_second_registered_redirect_uri_with_its_own_query(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient
) -> None:
    smart_sb.register_app("q-app", redirect_uris=["https://app.example.org/cb?tenant=7"])
    _, challenge = pkce()
    params = authorize_params(
        smart_sb, "q-app", challenge, redirect_uri="https://app.example.org/cb?tenant=7"
    )
    response = await smart_http.get(smart_sb.authorize_url, params=params)
    assert response.status_code == 302
    assert response.headers["location"].startswith("https://app.example.org/cb?tenant=7&code=")


async def test_post_authorize_only_with_launch(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app: str
) -> None:
    _, challenge = pkce()
    standalone = authorize_params(smart_sb, app, challenge)
    assert error_code(await smart_http.post(smart_sb.authorize_url, data=standalone)) == "post_without_launch"
    launch = smart_sb.mint_launch(DERRICK)
    ehr = authorize_params(smart_sb, app, challenge, scope=EHR_SCOPE, launch=launch)
    assert "code" in redirect_query(await smart_http.post(smart_sb.authorize_url, data=ehr))


async def test_launch_token_expires_and_can_be_bound_to_a_client(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app: str
) -> None:
    _, challenge = pkce()
    launch = smart_sb.mint_launch(DERRICK)
    smart_sb.clock.advance(smart_sb.smart.launch_lifetime)
    params = authorize_params(smart_sb, app, challenge, scope=EHR_SCOPE, launch=launch)
    assert error_code(await smart_http.get(smart_sb.authorize_url, params=params)) == "invalid_launch_token"
    other = smart_sb.mint_launch(DERRICK, client_id="another-app")
    params = authorize_params(smart_sb, app, challenge, scope=EHR_SCOPE, launch=other)
    assert error_code(await smart_http.get(smart_sb.authorize_url, params=params)) == "invalid_launch_token"


async def test_deny_next_redirects_access_denied_once(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app: str
) -> None:
    smart_sb.smart.deny_next = True
    _, challenge = pkce()
    params = authorize_params(smart_sb, app, challenge)
    query = redirect_query(await smart_http.get(smart_sb.authorize_url, params=params))
    assert query == {"error": "access_denied", "state": params["state"]}
    assert smart_sb.smart.deny_next is False
    assert smart_sb.stats["authorize_denied"] == 1
    assert "code" in redirect_query(await smart_http.get(smart_sb.authorize_url, params=params))


def _form(page: httpx.Response) -> tuple[str, str]:
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    action = re.search(r'<form id="login" method="post" action="([^"]+)"', page.text)
    session = re.search(r'name="session" value="([^"]+)"', page.text)
    assert action is not None
    assert session is not None
    return action.group(1), session.group(1)


async def test_login_page_when_auto_login_is_off(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app: str
) -> None:
    smart_sb.smart.auto_login = False
    verifier, challenge = pkce()
    params = authorize_params(
        smart_sb, app, challenge, scope="openid fhirUser launch/patient patient/Patient.read"
    )
    action, session = _form(await smart_http.get(smart_sb.authorize_url, params=params))
    wrong = await smart_http.post(
        action, data={"session": session, "username": "FHIR", "password": "nope", "action": "login"}
    )
    assert 'id="login-error"' in wrong.text
    assert smart_sb.stats["login_failures"] == 1
    assert smart_sb.stats["auth_codes_issued"] == 0
    # A MyChart test patient logs in: patient-facing standalone, the patient is the user.
    good = {"session": session, "username": "fhirderrick", "password": "epicepic1", "action": "login"}
    query = redirect_query(await smart_http.post(action, data=good))
    assert query["state"] == params["state"]
    body = json_body(await token(smart_http, smart_sb, code_form(query["code"], verifier, client_id=app)))
    assert body["patient"] == DERRICK
    # The session is single use.
    assert error_code(await smart_http.post(action, data=good)) == "unknown_login_session"


async def test_login_page_deny_button(smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app: str) -> None:
    smart_sb.smart.auto_login = False
    _, challenge = pkce()
    params = authorize_params(smart_sb, app, challenge)
    action, session = _form(await smart_http.get(smart_sb.authorize_url, params=params))
    query = redirect_query(await smart_http.post(action, data={"session": session, "action": "deny"}))
    assert query == {"error": "access_denied", "state": params["state"]}


async def test_provider_login_gets_the_standalone_patient(
    smart_sb: EpicSandbox, smart_http: httpx.AsyncClient, app: str
) -> None:
    smart_sb.smart.auto_login = False
    smart_sb.smart.standalone_patient = DERRICK
    verifier, challenge = pkce()
    action, session = _form(
        await smart_http.get(smart_sb.authorize_url, params=authorize_params(smart_sb, app, challenge))
    )
    login = {"session": session, "username": "fhirtwo", "password": "EpicFhir11!", "action": "login"}
    code = redirect_query(await smart_http.post(action, data=login))["code"]
    body = json_body(await token(smart_http, smart_sb, code_form(code, verifier, client_id=app)))
    assert body["patient"] == DERRICK
    assert body["patient"] != CAMILA
