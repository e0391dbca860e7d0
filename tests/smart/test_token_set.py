"""The token set: Epic's launch context parsed, unknown keys kept, a faithful dict round-trip, a safe repr."""

from __future__ import annotations

from typing import Any

import pytest

from epic_fhir_async import ConfigurationError, SmartTokenSet, _json
from epic_fhir_async.auth._smart_tokens import parse_banner_flag

from .conftest import BASE, CLIENT_ID, NOW, TOKEN_URL, FakeSmart, MakeLaunch


async def launched(make_launch: MakeLaunch, fake: FakeSmart, **kwargs: Any) -> SmartTokenSet:
    async with make_launch(**kwargs) as launch:
        request = await launch.begin(launch="abc", iss=BASE)
        return await launch.complete(request, fake.authorize(request))


@pytest.mark.anyio
async def test_epic_launch_context_is_parsed(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    tokens = await launched(make_launch, fake)
    assert tokens.patient == "eq081-VQEgP8drUUqCWzHfw3"
    assert tokens.encounter == "eCE1sDm8fb3bWm2Eb2Uo0Vw3"
    assert tokens.need_patient_banner is False  # Epic's "false" string
    assert tokens.smart_style_url is not None
    assert tokens.smart_style_url.endswith("/x.json")
    assert tokens.fhir_user == f"{BASE}/Practitioner/eVsF0rG.I5uF1QWsDl1d8Jw3"
    assert tokens.id_token is not None
    assert tokens.id_token_claims is not None
    assert tokens.id_token_claims["aud"] == CLIENT_ID
    assert tokens.expires_at == NOW + 3600
    assert tokens.issued_at == NOW
    assert "openid" in tokens.scopes
    assert tokens.token_type == "Bearer"
    assert tokens.client_id == CLIENT_ID
    assert tokens.token_url == TOKEN_URL
    assert tokens.fhir_base == BASE


@pytest.mark.anyio
async def test_unknown_keys_are_kept_as_they_came(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    fake.context["appointment"] = ["e1", "e2"]
    fake.context["customToken"] = {"nested": 1}
    tokens = await launched(make_launch, fake)
    assert dict(tokens.extra) == {
        "__epic.dstu2.patient": "TGwSd5DsUtFPi.RVwdDRPYpF7E09u8KO.Ee3BjzW1WtZ8B",
        "location": "e4W4rmGe9QzuGm2Dy4NBqVc0KDe6yGld6HW95UuN-Qd03",
        "loginDepartment": "1234",
        "appointment": ["e1", "e2"],
        "customToken": {"nested": 1},
        "state": "echoed-by-epic",
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("false", False),
        ("False", False),
        (" FALSE ", False),
        ("0", False),
        (False, False),
        ("true", True),
        (True, True),
        (None, True),
        ("maybe", True),
        (0, False),
        (1, True),
    ],
)
def test_need_patient_banner_string_or_bool(value: object, expected: bool) -> None:
    assert parse_banner_flag(value) is expected


@pytest.mark.anyio
async def test_a_missing_banner_flag_means_show_the_banner(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    del fake.context["need_patient_banner"]
    assert (await launched(make_launch, fake)).need_patient_banner is True


@pytest.mark.anyio
async def test_to_dict_from_dict_round_trips_through_json(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    fake.client_secret = "s3cret"
    tokens = await launched(make_launch, fake, client_secret="s3cret")
    saved = _json.loads(_json.dumps(tokens.to_dict()))  # what a session store would hold
    restored = SmartTokenSet.from_dict(saved)
    assert restored.to_dict() == tokens.to_dict()
    for name in ("access_token", "refresh_token", "patient", "need_patient_banner", "fhir_user", "scopes"):
        assert getattr(restored, name) == getattr(tokens, name), name
    assert dict(restored.extra) == dict(tokens.extra)
    assert restored.id_token_claims == tokens.id_token_claims


@pytest.mark.anyio
async def test_repr_hides_every_token(make_launch: MakeLaunch, fake: FakeSmart) -> None:
    fake.client_secret = "s3cret"
    tokens = await launched(make_launch, fake, client_secret="s3cret")
    text = repr(tokens) + str(tokens)
    assert tokens.refresh_token is not None
    assert tokens.id_token is not None
    for secret in (tokens.access_token, tokens.refresh_token, tokens.id_token, tokens.patient or "x"):
        assert secret not in text
    assert "<masked" in text
    assert CLIENT_ID in text


@pytest.mark.parametrize(
    "damage",
    [{"format": 2}, {"access_token": ""}, {"expires_at": "later"}, {"token_url": None}, {"client_id": 3}],
)
def test_a_damaged_saved_token_set_is_refused(damage: dict[str, object]) -> None:
    good = SmartTokenSet(
        access_token="a", expires_at=NOW, client_id=CLIENT_ID, token_url=TOKEN_URL, fhir_base=BASE
    ).to_dict()
    SmartTokenSet.from_dict(good)
    with pytest.raises(ConfigurationError, match="launch again"):
        SmartTokenSet.from_dict({**good, **damage})
