"""The authorization URL: Epic's rules on aud, PKCE, state, nonce, scopes and the launch parameter."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qsl

import httpx
import pytest

from epic_fhir_async import ConfigurationError, LaunchStateError, UntrustedIssuer
from epic_fhir_async.auth import AuthorizationRequest
from epic_fhir_async.auth._smart_request import normalise_scopes

from .conftest import AUTHORIZE_URL, BASE, CLIENT_ID, REDIRECT, FakeSmart, MakeLaunch

V2_VITALS = (
    "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
)


def query(request: AuthorizationRequest) -> dict[str, str]:
    url = httpx.URL(request.url)
    assert str(url.copy_with(query=None)) == AUTHORIZE_URL
    pairs = parse_qsl(url.query.decode(), keep_blank_values=True)
    assert len(pairs) == len({k for k, _ in pairs}), "a parameter is repeated"
    return dict(pairs)


@pytest.mark.anyio
async def test_standalone_url_has_every_required_parameter(make_launch: MakeLaunch) -> None:
    async with make_launch() as launch:
        request = await launch.begin()
    q = query(request)
    assert q["response_type"] == "code"
    assert q["client_id"] == CLIENT_ID
    assert q["redirect_uri"] == REDIRECT
    assert q["aud"] == BASE
    assert q["state"] == request.state
    assert "launch" not in q
    assert q["scope"].split() == ["openid", "fhirUser", "launch/patient", "patient/Patient.read"]
    assert request.params == q
    assert not request.is_ehr_launch


@pytest.mark.anyio
async def test_aud_is_the_fhir_base_for_every_kind_of_launch(make_launch: MakeLaunch) -> None:
    async with make_launch(scopes="openid") as launch:  # even a plain OIDC login carries aud
        requests = [
            await launch.begin(),
            await launch.begin(launch="abc", iss=BASE),
            await launch.begin(launch="abc", iss=BASE + "/", scopes="launch/encounter"),
        ]
    assert [query(r)["aud"] for r in requests] == [BASE] * 3


@pytest.mark.anyio
async def test_pkce_is_s256_of_the_stored_verifier_never_plain(make_launch: MakeLaunch) -> None:
    async with make_launch() as launch:
        request = await launch.begin()
    q = query(request)
    assert q["code_challenge_method"] == "S256"
    digest = hashlib.sha256(request.code_verifier.encode()).digest()
    assert q["code_challenge"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert q["code_challenge"] != request.code_verifier
    assert 43 <= len(request.code_verifier) <= 128
    assert request.code_verifier not in request.url


@pytest.mark.anyio
async def test_state_and_verifier_are_fresh_and_carry_at_least_128_bits(make_launch: MakeLaunch) -> None:
    async with make_launch() as launch:
        requests = [await launch.begin() for _ in range(50)]
    states = {r.state for r in requests}
    assert len(states) == 50
    assert len({r.code_verifier for r in requests}) == 50
    for state in states:
        raw = base64.urlsafe_b64decode(state + "=" * (-len(state) % 4))
        assert len(raw) * 8 >= 128


@pytest.mark.anyio
async def test_nonce_only_when_openid_is_requested(make_launch: MakeLaunch) -> None:
    async with make_launch(scopes="openid fhirUser") as launch:
        with_openid = await launch.begin()
    async with make_launch(scopes="patient/Patient.read") as launch:
        without = await launch.begin()
    assert with_openid.nonce is not None
    assert query(with_openid)["nonce"] == with_openid.nonce
    assert without.nonce is None
    assert "nonce" not in query(without)


@pytest.mark.anyio
async def test_smart_v1_and_v2_scopes_reach_epic_verbatim(make_launch: MakeLaunch) -> None:
    scopes = ["openid", "fhirUser", "offline_access", "patient/Observation.read", V2_VITALS, "Patient.Read"]
    async with make_launch(scopes=scopes) as launch:
        request = await launch.begin()
    assert "%7C" in request.url
    assert "%3F" in request.url
    assert " " not in request.url
    assert "+" not in request.url
    assert query(request)["scope"].split() == scopes


@pytest.mark.anyio
async def test_ehr_launch_adds_the_launch_scope_and_parameter(make_launch: MakeLaunch) -> None:
    async with make_launch(scopes="openid fhirUser launch patient/Patient.read") as launch:
        ehr = await launch.begin(launch="LAUNCH-TOKEN-" + "y" * 500, iss=BASE)
        standalone = await launch.begin()
    assert query(ehr)["launch"] == "LAUNCH-TOKEN-" + "y" * 500  # long JWT-like launch tokens stay whole
    assert "launch" in query(ehr)["scope"].split()
    assert ehr.is_ehr_launch
    # Epic prompts for a login instead of using context when a standalone launch asks for "launch".
    assert "launch" not in query(standalone)["scope"].split()
    async with make_launch(scopes="openid") as launch:
        added = await launch.begin(launch="x")
    assert query(added)["scope"].split() == ["launch", "openid"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "iss",
    [
        "https://evil.example.org/interconnect-fhir-oauth/api/FHIR/R4",
        "http://fhir.example.org/interconnect-fhir-oauth/api/FHIR/R4",
        "https://fhir.example.org/other/api/FHIR/R4",
        "https://fhir.example.org:8443/interconnect-fhir-oauth/api/FHIR/R4",
        "not a url",
    ],
)
async def test_an_ehr_launch_from_an_unknown_iss_is_refused(
    make_launch: MakeLaunch, fake: FakeSmart, iss: str
) -> None:
    async with make_launch() as launch:
        with pytest.raises(UntrustedIssuer, match="not the configured FHIR base"):
            await launch.begin(launch="abc", iss=iss)
    assert fake.discovery == []  # refused before any request to anyone


@pytest.mark.anyio
async def test_issuer_match_ignores_case_of_host_and_a_trailing_slash(make_launch: MakeLaunch) -> None:
    async with make_launch() as launch:
        assert launch.matches_issuer("HTTPS://FHIR.example.org:443/interconnect-fhir-oauth/api/FHIR/R4/")
        assert not launch.matches_issuer(
            "https://fhir.example.org/interconnect-fhir-oauth/api/FHIR/R4/Patient"
        )


@pytest.mark.anyio
async def test_discovery_uses_smart_configuration_once_with_epic_client_id(
    make_launch: MakeLaunch, fake: FakeSmart
) -> None:
    async with make_launch() as launch:
        await launch.begin()
        await launch.begin()
    assert len(fake.discovery) == 1
    assert fake.discovery[0].headers["Epic-Client-ID"] == CLIENT_ID


@pytest.mark.anyio
async def test_configured_endpoints_skip_discovery(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    async with make_launch(
        authorization_endpoint=AUTHORIZE_URL + "?x=1", token_url=AUTHORIZE_URL[:-9] + "token"
    ) as launch:
        request = await launch.begin()
    assert fake.discovery == []
    assert request.url.startswith(AUTHORIZE_URL + "?x=1&response_type=code")


@pytest.mark.anyio
async def test_a_server_without_an_authorize_endpoint_is_a_configuration_error(
    make_launch: MakeLaunch, fake: FakeSmart
) -> None:
    del fake.smart_config["authorization_endpoint"]
    async with make_launch() as launch:
        with pytest.raises(ConfigurationError, match="no authorization endpoint"):
            await launch.begin()


@pytest.mark.anyio
async def test_extra_params_cannot_override_the_security_parameters(make_launch: MakeLaunch) -> None:
    async with make_launch() as launch:
        request = await launch.begin(extra_params={"prompt": "login"})
        assert query(request)["prompt"] == "login"
        for key in ("aud", "code_challenge_method", "state", "launch"):
            with pytest.raises(ConfigurationError, match=key):
                await launch.begin(extra_params={key: "plain"})


@pytest.mark.parametrize("bad", ["patient/Observation.read extra\ttab", 'quote"d', "back\\slash", ""])
def test_malformed_scopes_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid scope"):
        normalise_scopes([bad])


def test_scopes_keep_order_and_drop_duplicates() -> None:
    assert normalise_scopes("openid  fhirUser openid\nlaunch") == ("openid", "fhirUser", "launch")
    assert normalise_scopes(None) == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"redirect_uri": "/callback"}, "redirect_uri"),
        ({"redirect_uri": "https://app.example.com/cb#frag"}, "fragment"),
        ({"client_id": " "}, "client_id"),
        ({"client_secret": "s", "private_key": "k"}, "not both"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, str], message: str) -> None:
    from epic_fhir_async.auth import SmartLaunch

    options = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        SmartLaunch(BASE, **options)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_authorization_request_round_trips_and_masks_secrets(make_launch: MakeLaunch) -> None:
    async with make_launch() as launch:
        request = await launch.begin(launch="abc", iss=BASE)
    restored = AuthorizationRequest.from_dict(request.to_dict())
    assert restored == request
    text = repr(request)
    assert request.state not in text
    assert request.code_verifier not in text
    assert CLIENT_ID in text


@pytest.mark.parametrize(
    "damage",
    [{"format": 99}, {"state": None}, {"scopes": 5}, {"created_at": "soon"}, {"nonce": 3}],
)
def test_a_damaged_saved_request_is_a_state_error(damage: dict[str, object]) -> None:
    saved = {
        "format": 1,
        "url": AUTHORIZE_URL + "?a=b",
        "authorization_endpoint": AUTHORIZE_URL,
        "state": "s" * 43,
        "code_verifier": "v" * 86,
        "redirect_uri": REDIRECT,
        "client_id": CLIENT_ID,
        "fhir_base": BASE,
        "scopes": ["openid"],
        "nonce": "n",
        "launch": None,
        "created_at": 1.0,
    }
    AuthorizationRequest.from_dict(saved)  # the undamaged one loads
    with pytest.raises(LaunchStateError):
        AuthorizationRequest.from_dict({**saved, **damage})
