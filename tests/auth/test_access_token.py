"""AccessToken: lenient parsing of Epic's token responses and a repr that never shows the token."""

from __future__ import annotations

import pytest

from epic_fhir_async import TokenRequestError
from epic_fhir_async.auth import AccessToken
from epic_fhir_async.auth._token import (
    DEFAULT_TOKEN_LIFETIME,
    MIN_TOKEN_LIFETIME,
    parse_scopes,
    parse_token_response,
)


def _parse(data: object) -> AccessToken:
    return parse_token_response(data, issued_at=100.0, wall_clock=lambda: 1_700_000_000.0)


@pytest.mark.parametrize("token_type", ["bearer", "Bearer", "BEARER", None, ""])
def test_token_type_in_any_case_means_bearer(token_type: str | None) -> None:
    data = {"access_token": "abc", "expires_in": 3600}
    if token_type is not None:
        data["token_type"] = token_type
    token = _parse(data)
    assert token.token_type == "Bearer"
    assert token.authorization == "Bearer abc"


def test_expires_in_drives_expiry_and_lifetime() -> None:
    token = _parse({"access_token": "abc", "token_type": "bearer", "expires_in": 3240})
    assert token.expires_at == 100.0 + 3240
    assert token.lifetime == 3240
    assert token.expires_at_wall == 1_700_000_000.0 + 3240
    assert token.expires_in(200.0) == 3140
    assert not token.is_expired(3339.9)
    assert token.is_expired(3340.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3599", 3599.0),
        (3.5, 3.5),
        ("soon", DEFAULT_TOKEN_LIFETIME),
        (None, DEFAULT_TOKEN_LIFETIME),
        (-5, MIN_TOKEN_LIFETIME),  # a floor: a token that expires at once cost a token request per request
        (0, MIN_TOKEN_LIFETIME),
        (0.001, MIN_TOKEN_LIFETIME),
    ],
)
def test_expires_in_is_parsed_leniently(raw: object, expected: float) -> None:
    token = _parse({"access_token": "abc", "expires_in": raw})
    assert token.lifetime == expected


def test_missing_expires_in_uses_the_default_lifetime() -> None:
    assert _parse({"access_token": "abc"}).lifetime == DEFAULT_TOKEN_LIFETIME


def test_scope_forms_and_unknown_keys_are_kept() -> None:
    data = {
        "access_token": "abc",
        "scope": "system/Patient.read  system/Observation.rs?category=laboratory Patient.read",
        "patient": "erXuFYUfucBZaryVksYEcMg3",
        "__epic.dstu2.patient": "Tbt3KuCY0B5PSrJvCu2j-PlK.aiHsu2xUjUM8bWpetXoB",
        "need_patient_banner": "false",
        "refresh_token": "r-1",
    }
    token = _parse(data)
    assert token.scopes == {
        "system/Patient.read",
        "system/Observation.rs?category=laboratory",
        "Patient.read",
    }
    assert token.extra["patient"] == "erXuFYUfucBZaryVksYEcMg3"
    assert token.extra["need_patient_banner"] == "false"
    assert "__epic.dstu2.patient" in token.extra
    assert "access_token" not in token.extra
    assert token.refresh_token == "r-1"
    with pytest.raises(TypeError):
        token.extra["x"] = 1  # type: ignore[index]


def test_parse_scopes_accepts_lists_and_ignores_junk() -> None:
    assert parse_scopes(["a", "b", 3, ""]) == {"a", "b"}
    assert parse_scopes(None) == frozenset()
    assert parse_scopes({"a": 1}) == frozenset()


@pytest.mark.parametrize(
    "data", [{"token_type": "bearer"}, {"access_token": ""}, {"access_token": 5}, [1, 2]]
)
def test_no_access_token_is_a_token_request_error(data: object) -> None:
    with pytest.raises(TokenRequestError):
        _parse(data)


def test_repr_and_str_mask_the_token_and_refresh_token() -> None:
    token = _parse({"access_token": "s3cr3t-token-value", "refresh_token": "r3fr3sh-value", "patient": "p"})
    for text in (repr(token), str(token), f"{token}"):
        assert "s3cr3t" not in text
        assert "r3fr3sh" not in text
        assert "masked" in text
    assert "patient" in repr(token)  # key names only


def test_tokens_compare_by_identity() -> None:
    a = _parse({"access_token": "same"})
    b = _parse({"access_token": "same"})
    assert a != b
    assert a == a
