"""Token endpoint: Epic's Backend Services rules one by one."""

from __future__ import annotations

import collections
import uuid
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, RSAKey

from epic_fhir_async import _json
from epic_fhir_async.sandbox._clock import SandboxClock
from epic_fhir_async.sandbox._http import Request, Response
from epic_fhir_async.sandbox._oauth import OAuthServer

from .conftest import CLOCK_NOW, TOKEN_URL, claims, form_request, public_jwks, sign, token_form


def post(server: OAuthServer, assertion: str, **extra: str) -> Response:
    return server.handle(form_request(token_form(assertion, **extra)), "token")


def body(response: Response) -> Any:
    return _json.loads(response.body)


def assert_invalid_client(server: OAuthServer, response: Response, reason: str) -> None:
    assert response.status == 400
    assert response.header("content-type") == "application/json; charset=utf-8"
    assert body(response) == {"error": "invalid_client", "error_description": None}
    assert server.last_failure == reason
    assert server.stats[f"token_failures:{reason}"] >= 1
    assert server.stats["tokens_issued"] == 0


def test_valid_rs384_assertion_gets_token(server: OAuthServer, rsa_key: RSAKey) -> None:
    response = post(server, sign(rsa_key, claims()))
    assert response.status == 200, server.last_failure
    assert response.header("content-type") == "application/json; charset=utf-8"
    data = body(response)
    assert set(data) == {"access_token", "token_type", "expires_in", "scope"}
    assert data["token_type"] == "bearer"
    assert data["expires_in"] == 3600
    assert "system/Patient.read" in data["scope"].split()
    assert 800 <= len(data["access_token"]) <= 1400
    assert data["access_token"].count(".") == 2
    assert server.stats["token_requests"] == 1
    assert server.stats["tokens_issued"] == 1
    assert server.check_bearer(f"Bearer {data['access_token']}", "Patient").client_id == "client-a"


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
def test_rsa_algorithms(server: OAuthServer, rsa_key: RSAKey, alg: str) -> None:
    assert post(server, sign(rsa_key, claims(), alg=alg)).status == 200


def test_es384_with_p384_key(server: OAuthServer, ec_key: ECKey) -> None:
    assert post(server, sign(ec_key, claims(), alg="ES384")).status == 200


def test_es256_with_p256_key(clock: SandboxClock) -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "p256"})
    srv = OAuthServer(token_url=TOKEN_URL, clock=clock, stats=collections.Counter())
    srv.register_client("c", public_jwks(key))
    assert post(srv, sign(key, claims("c"), alg="ES256")).status == 200


def test_distinct_tokens_per_call(server: OAuthServer, rsa_key: RSAKey) -> None:
    tokens = {body(post(server, sign(rsa_key, claims())))["access_token"] for _ in range(5)}
    assert len(tokens) == 5


def test_optional_scope_and_client_id_accepted(server: OAuthServer, rsa_key: RSAKey) -> None:
    response = post(server, sign(rsa_key, claims()), scope="system/Patient.read", client_id="client-a")
    assert response.status == 200


def test_client_id_in_body_must_match(server: OAuthServer, rsa_key: RSAKey) -> None:
    assert_invalid_client(
        server, post(server, sign(rsa_key, claims()), client_id="other"), "client_id_mismatch"
    )


def test_scope_lists_allowed_types(clock: SandboxClock, rsa_key: RSAKey) -> None:
    srv = OAuthServer(token_url=TOKEN_URL, clock=clock, stats=collections.Counter())
    srv.register_client("c", public_jwks(rsa_key), resource_types=["Patient", "Observation"])
    assert (
        body(post(srv, sign(rsa_key, claims("c"))))["scope"] == "system/Observation.read system/Patient.read"
    )


# -- one rule at a time ------------------------------------------------------------------------------------
def test_replayed_jti(server: OAuthServer, rsa_key: RSAKey) -> None:
    payload = claims()
    assert post(server, sign(rsa_key, payload)).status == 200
    response = post(server, sign(rsa_key, payload))
    assert response.status == 400
    assert server.last_failure == "replayed_jti"


def test_jti_reusable_after_its_exp(server: OAuthServer, rsa_key: RSAKey, clock: SandboxClock) -> None:
    jti = str(uuid.uuid4())
    assert post(server, sign(rsa_key, claims(jti=jti, exp=int(CLOCK_NOW) + 10))).status == 200
    clock.advance(20)
    assert post(server, sign(rsa_key, claims(now=CLOCK_NOW + 20, jti=jti))).status == 200


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": TOKEN_URL + "/"}, "bad_aud"),
        ({"aud": "https://fhir.epic.com/interconnect-fhir-oauth/oauth2/token"}, "bad_aud"),
        ({"exp": int(CLOCK_NOW) + 301}, "exp_too_far"),
        ({"exp": int(CLOCK_NOW) - 1}, "expired"),
        ({"exp": None}, "missing_exp"),
        ({"exp": "soon"}, "bad_exp"),
        ({"iat": int(CLOCK_NOW) + 60}, "iat_in_future"),
        ({"nbf": int(CLOCK_NOW) + 60}, "nbf_in_future"),
        ({"iat": int(CLOCK_NOW) - 100, "exp": int(CLOCK_NOW) + 250}, "iat_window"),
        ({"nbf": int(CLOCK_NOW) - 100, "iat": None, "exp": int(CLOCK_NOW) + 250}, "nbf_window"),
        ({"jti": "x" * 152}, "jti_too_long"),
        ({"jti": 12345}, "bad_jti"),
        ({"jti": None}, "bad_jti"),
        ({"sub": "someone-else"}, "sub_mismatch"),
        ({"iss": None}, "missing_iss"),
    ],
)
def test_claim_rules(server: OAuthServer, rsa_key: RSAKey, overrides: dict[str, Any], reason: str) -> None:
    assert_invalid_client(server, post(server, sign(rsa_key, claims(**overrides))), reason)


def test_jti_of_151_chars_and_small_skew_accepted(server: OAuthServer, rsa_key: RSAKey) -> None:
    payload = claims(jti="j" * 151, iat=int(CLOCK_NOW) + 3, nbf=int(CLOCK_NOW) + 3, exp=int(CLOCK_NOW) + 300)
    assert post(server, sign(rsa_key, payload)).status == 200, server.last_failure


def test_nbf_and_iat_optional(server: OAuthServer, rsa_key: RSAKey) -> None:
    assert post(server, sign(rsa_key, claims(nbf=None, iat=None))).status == 200


def test_unknown_client(server: OAuthServer, rsa_key: RSAKey) -> None:
    assert_invalid_client(server, post(server, sign(rsa_key, claims("nobody"))), "unknown_client")


def test_unknown_kid(server: OAuthServer, rsa_key: RSAKey) -> None:
    assert_invalid_client(server, post(server, sign(rsa_key, claims(), kid="nope")), "unknown_kid")


def test_wrong_key_same_kid(server: OAuthServer) -> None:
    impostor = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    assert_invalid_client(server, post(server, sign(impostor, claims())), "bad_signature")


def test_kidless_jwt_needs_single_key_jwks(clock: SandboxClock, rsa_key: RSAKey, ec_key: ECKey) -> None:
    # Documented choice: with one registered key, a kid-less JWT is verified with it (Epic's static-key mode
    # keeps no kid); with several keys, Epic needs kid to choose, so the request fails.
    single = OAuthServer(token_url=TOKEN_URL, clock=clock, stats=collections.Counter())
    single.register_client("client-a", public_jwks(rsa_key))
    assert post(single, sign(rsa_key, claims(), kid=None)).status == 200
    server = OAuthServer(token_url=TOKEN_URL, clock=clock, stats=collections.Counter())
    server.register_client("client-a", public_jwks(rsa_key, ec_key))
    assert_invalid_client(server, post(server, sign(rsa_key, claims(), kid=None)), "missing_kid")


def test_typ_must_be_jwt(server: OAuthServer, rsa_key: RSAKey) -> None:
    assert_invalid_client(server, post(server, sign(rsa_key, claims(), typ="at+jwt")), "bad_typ")


def test_typ_absent_is_fine(server: OAuthServer, rsa_key: RSAKey) -> None:
    assert post(server, sign(rsa_key, claims(), typ=None)).status == 200


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_alg_none(server: OAuthServer) -> None:
    header = _b64(_json.dumps({"alg": "none", "kid": "rsa-1"}))
    token = f"{header}.{_b64(_json.dumps(claims()))}."
    assert_invalid_client(server, post(server, token), "bad_alg")


def test_alg_hs256_with_public_modulus_as_secret(server: OAuthServer, rsa_key: RSAKey) -> None:
    modulus = rsa_key.as_dict(private=False)["n"]
    assert isinstance(modulus, str)
    secret = OctKey.import_key(modulus.encode())
    token = jws.serialize_compact(
        {"alg": "HS256", "kid": "rsa-1"}, _json.dumps(claims()), secret, algorithms=["HS256"]
    )
    assert_invalid_client(server, post(server, token), "bad_alg")


def test_rs384_header_on_ec_key(server: OAuthServer, rsa_key: RSAKey) -> None:
    # Signed by the RSA key but naming the EC key's kid: the alg does not fit the key picked.
    assert_invalid_client(server, post(server, sign(rsa_key, claims(), kid="ec-1")), "alg_key_mismatch")


def test_es256_on_p384_key(server: OAuthServer) -> None:
    # An EC P-384 key only verifies ES384: ES256 naming the P-384 key's kid is refused.
    p256 = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    assert_invalid_client(server, post(server, sign(p256, claims(), alg="ES256")), "alg_key_mismatch")


def test_ps256_rejected(server: OAuthServer, rsa_key: RSAKey) -> None:
    assert_invalid_client(server, post(server, sign(rsa_key, claims(), alg="PS256")), "bad_alg")


def test_small_rsa_key(clock: SandboxClock) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns about < 2048 bits, which is the point here
        small = RSAKey.generate_key(1024, parameters={"kid": "small"})
        token = sign(small, claims("c"))
    srv = OAuthServer(token_url=TOKEN_URL, clock=clock, stats=collections.Counter())
    srv.register_client("c", public_jwks(small))
    assert_invalid_client(srv, post(srv, token), "weak_key")


def test_garbage_assertion(server: OAuthServer) -> None:
    assert_invalid_client(server, post(server, "not-a-jwt"), "malformed")


def test_missing_assertion_and_wrong_assertion_type(server: OAuthServer, rsa_key: RSAKey) -> None:
    fields = token_form(sign(rsa_key, claims()))
    fields["client_assertion_type"] = "urn:something-else"
    assert_invalid_client(server, server.handle(form_request(fields), "token"), "bad_assertion_type")
    del fields["client_assertion"]
    fields["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert_invalid_client(server, server.handle(form_request(fields), "token"), "missing_assertion")


def test_failure_reasons_never_hold_secrets(server: OAuthServer, rsa_key: RSAKey) -> None:
    token = sign(rsa_key, claims(aud="x"))
    post(server, token)
    assert all(token not in reason and len(reason) < 40 for reason in server.failures)
    assert all(token not in key for key in server.stats)


# -- malformed requests: invalid_request ---------------------------------------------------------------------
def assert_invalid_request(server: OAuthServer, response: Response, reason: str) -> None:
    assert response.status == 400
    assert body(response)["error"] == "invalid_request"
    assert server.last_failure == reason


def test_json_body(server: OAuthServer, rsa_key: RSAKey) -> None:
    req = Request(
        "POST",
        "/x",
        headers={"content-type": "application/json"},
        body=_json.dumps(token_form(sign(rsa_key, claims()))),
    )
    assert_invalid_request(server, server.handle(req, "token"), "not_form")


def test_get(server: OAuthServer) -> None:
    assert_invalid_request(server, server.handle(Request("GET", "/x"), "token"), "not_post")


def test_query_string_params(server: OAuthServer, rsa_key: RSAKey) -> None:
    req = form_request({}, query="grant_type=client_credentials")
    assert_invalid_request(server, server.handle(req, "token"), "query_string")


def test_wrong_grant_type(server: OAuthServer, rsa_key: RSAKey) -> None:
    fields = token_form(sign(rsa_key, claims()))
    fields["grant_type"] = "password"
    response = server.handle(form_request(fields), "token")
    assert response.status == 400
    assert body(response)["error"] == "unsupported_grant_type"


def test_unknown_subpath_is_iis_404(server: OAuthServer) -> None:
    response = server.handle(Request("GET", "/x"), "nothing-here")
    assert response.status == 404
    assert b"404 - File or directory not found." in response.body


# -- registry states and flakes ----------------------------------------------------------------------------------
def test_sync_delay(clock: SandboxClock, rsa_key: RSAKey) -> None:
    srv = OAuthServer(token_url=TOKEN_URL, clock=clock, stats=collections.Counter())
    srv.register_client("c", public_jwks(rsa_key), sync_delay=1800)
    assert_invalid_client(srv, post(srv, sign(rsa_key, claims("c"))), "not_synced")
    clock.advance(1801)
    assert post(srv, sign(rsa_key, claims("c", now=CLOCK_NOW + 1801))).status == 200


def test_unmapped_user(clock: SandboxClock, rsa_key: RSAKey) -> None:
    srv = OAuthServer(token_url=TOKEN_URL, clock=clock, stats=collections.Counter())
    srv.register_client("c", public_jwks(rsa_key), user_mapped=False)
    response = post(srv, sign(rsa_key, claims("c")))
    assert response.status == 400
    assert body(response) == {"error": "unauthorized_client"}


def test_flake_rate_one_and_zero(server: OAuthServer, rsa_key: RSAKey) -> None:
    server.token_flake_rate = 1.0
    for _ in range(3):
        assert_invalid_client(server, post(server, sign(rsa_key, claims())), "flake")
    assert server.stats["token_flakes"] == 3
    server.token_flake_rate = 0.0
    for _ in range(3):
        assert post(server, sign(rsa_key, claims())).status == 200
    assert server.stats["token_flakes"] == 3


def test_register_rejects_private_jwks(server: OAuthServer, rsa_key: RSAKey) -> None:
    with pytest.raises(ValueError, match="private"):
        server.register_client("p", {"keys": [rsa_key.as_dict(private=True)]})
    with pytest.raises(ValueError, match="keys"):
        server.register_client("p", {"keys": []})
    with pytest.raises(KeyError):
        server.allowed_types("p")


def test_allowed_types(server: OAuthServer, rsa_key: RSAKey) -> None:
    assert server.allowed_types("client-a") is None
    server.register_client(
        "b", public_jwks(rsa_key), resource_types=["Patient", "Observation?category=laboratory"]
    )
    assert server.allowed_types("b") == frozenset({"Patient", "Observation?category=laboratory"})
