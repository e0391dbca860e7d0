"""id_token verification: signature from jwks_uri, RS256 only, issuer, audience, expiry, nonce."""

from __future__ import annotations

from typing import Any

import pytest

from epic_fhir_async import IdTokenError, SmartTokenSet
from epic_fhir_async.auth import IdTokenVerifier, generate_private_key

from .conftest import BASE, JWKS_URL, OAUTH, FakeClock, FakeSmart, MakeLaunch


async def launched(make_launch: MakeLaunch, fake: FakeSmart, **kwargs: Any) -> SmartTokenSet:
    async with make_launch(**kwargs) as launch:
        request = await launch.begin()
        return await launch.complete(request, fake.authorize(request))


async def rejected(make_launch: MakeLaunch, fake: FakeSmart, **kwargs: Any) -> IdTokenError:
    with pytest.raises(IdTokenError) as caught:
        await launched(make_launch, fake, **kwargs)
    return caught.value


@pytest.mark.anyio
async def test_a_good_id_token_verifies_and_its_claims_are_kept(
    make_launch: MakeLaunch, fake: FakeSmart
) -> None:
    tokens = await launched(make_launch, fake)
    assert tokens.id_token_claims is not None
    assert tokens.id_token_claims["iss"] == OAUTH
    assert tokens.id_token_claims["sub"] == "eVsF0rG.I5uF1QWsDl1d8Jw3"
    assert fake.jwks_requests == 1


@pytest.mark.anyio
async def test_a_signature_by_another_key_is_refused(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    fake.published_key = fake.id_key
    fake.id_key = generate_private_key("RS256", kid=fake.id_key.kid)  # same kid, another key signs
    error = await rejected(make_launch, fake)
    assert error.reason == "bad_signature"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"iss": "https://evil.example.org/oauth2"}, "wrong_issuer"),
        ({"iss": None}, "wrong_issuer"),
        ({"aud": "another-client"}, "wrong_audience"),
        ({"aud": ["another-client", "x"]}, "wrong_audience"),
        ({"nonce": "replayed-nonce"}, "wrong_nonce"),
        ({"exp": None}, "malformed"),
    ],
)
async def test_claims_that_do_not_fit_are_refused(
    make_launch: MakeLaunch, fake: FakeSmart, overrides: dict[str, Any], reason: str
) -> None:
    fake.id_token_overrides = overrides
    assert (await rejected(make_launch, fake)).reason == reason


@pytest.mark.anyio
async def test_a_missing_nonce_is_refused_when_one_was_sent(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    original = fake.id_token
    fake.id_token = lambda client_id, nonce: original(client_id, None)  # type: ignore[method-assign]
    assert (await rejected(make_launch, fake)).reason == "wrong_nonce"


@pytest.mark.anyio
async def test_an_audience_list_with_our_client_is_accepted(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    fake.id_token_overrides = {"aud": ["launch-client", "other"], "azp": "launch-client"}
    assert (await launched(make_launch, fake)).id_token_claims is not None


@pytest.mark.anyio
async def test_expiry_has_a_small_leeway(make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock) -> None:
    fake.id_token_overrides = {"exp": int(clock()) - 30}  # within the 60 s leeway
    assert (await launched(make_launch, fake)).id_token_claims is not None
    fake.id_token_overrides = {"exp": int(clock()) - 61}
    error = await rejected(make_launch, fake)
    assert error.reason == "expired"
    assert "clock" in str(error)
    fake.id_token_overrides = {"iat": int(clock()) + 600, "exp": int(clock()) + 900}
    assert (await rejected(make_launch, fake)).reason == "issued_in_future"


@pytest.mark.anyio
@pytest.mark.parametrize("alg", ["none", "HS256", "RS384"])
async def test_only_rs256_is_accepted(make_launch: MakeLaunch, fake: FakeSmart, alg: str) -> None:
    fake.id_token_header = {"alg": alg}
    error = await rejected(make_launch, fake)
    assert error.reason == "bad_algorithm"
    assert fake.jwks_requests == 0  # refused before fetching any key


@pytest.mark.anyio
async def test_a_garbled_id_token_is_malformed(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    fake.id_token = lambda client_id, nonce: "not-a-jwt"  # type: ignore[method-assign]
    assert (await rejected(make_launch, fake)).reason == "malformed"


@pytest.mark.anyio
async def test_verification_can_be_turned_off(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    fake.id_token_overrides = {"aud": "another-client"}
    tokens = await launched(make_launch, fake, verify_id_token=False)
    assert tokens.id_token is not None
    assert tokens.id_token_claims is None
    assert tokens.fhir_user is None


@pytest.mark.anyio
async def test_keys_are_cached_and_refetched_once_on_an_unknown_kid(
    make_launch: MakeLaunch, fake: FakeSmart, clock: FakeClock
) -> None:
    async with make_launch() as launch:
        for _ in range(3):
            request = await launch.begin()
            await launch.complete(request, fake.authorize(request))
        assert fake.jwks_requests == 1
        fake.id_key = generate_private_key("RS256", kid="rotated")  # Epic rotates its OIDC key
        request = await launch.begin()
        with pytest.raises(IdTokenError) as caught:
            await launch.complete(request, fake.authorize(request))  # fetched moments ago: no refetch
        assert caught.value.reason == "unknown_key"
        assert fake.jwks_requests == 1
        clock.advance(61)
        request = await launch.begin()
        tokens = await launch.complete(request, fake.authorize(request))
        assert tokens.id_token_claims is not None
        assert fake.jwks_requests == 2 == launch.id_token_verifier.jwks_fetches


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["smart-configuration", "base", "oauth"])
async def test_the_openid_configuration_is_found_where_epic_publishes_it(
    make_launch: MakeLaunch, fake: FakeSmart, where: str
) -> None:
    fake.openid_at_oauth = where == "oauth"
    fake.openid_at_base = where == "base"
    if where == "smart-configuration":
        fake.smart_config.update(issuer=OAUTH, jwks_uri=JWKS_URL)
    assert (await launched(make_launch, fake)).id_token_claims is not None


@pytest.mark.anyio
async def test_no_openid_configuration_is_a_clear_error(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    fake.openid_at_oauth = False
    error = await rejected(make_launch, fake)
    assert error.reason == "no_configuration"
    assert "jwks_uri=" in str(error)


@pytest.mark.anyio
async def test_configured_issuer_and_jwks_uri_skip_openid_discovery(
    make_launch: MakeLaunch, fake: FakeSmart
) -> None:
    fake.openid_at_oauth = False
    tokens = await launched(make_launch, fake, id_token_issuer=OAUTH, jwks_uri=JWKS_URL)
    assert tokens.id_token_claims is not None


def test_symmetric_or_none_algorithms_cannot_be_configured() -> None:
    for algs in (["HS256"], ["none"], []):
        with pytest.raises(ValueError, match="asymmetric"):
            IdTokenVerifier(algorithms=algs)


def test_the_fhir_base_is_not_an_issuer_by_accident() -> None:
    assert BASE != OAUTH  # the tests would prove nothing if the two were the same string
