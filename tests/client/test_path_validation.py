"""A type, id or operation name that would change the URL path is refused before anything is sent."""

from __future__ import annotations

import pytest

from epic_fhir_async import ConfigurationError, EpicFHIRClient
from epic_fhir_async._urls import MAX_ID_LENGTH, check_id, check_operation, check_type
from tests.conftest import BASE, CAMILA, Recorder

pytestmark = pytest.mark.anyio

# (id, a fragment the message must contain)
BAD_IDS = [
    ("../metadata", "'/'"),
    ("abc?_format=xml", "'?'"),
    ("abc#frag", "'#'"),
    ("Patient/abc", "pass the type and the id separately"),
    ("abc def", "U+0020"),
    ("abc%2Fdef", "'%'"),
    ("", "empty"),
    (".", "only of dots"),
    ("..", "only of dots"),
    ("é" * 3, "'é'"),
    ("a" * (MAX_ID_LENGTH + 1), f"{MAX_ID_LENGTH + 1} characters long"),
]


@pytest.mark.parametrize(("bad", "expected"), BAD_IDS)
async def test_read_refuses_an_invalid_id_without_sending(
    recorder: Recorder, bad: str, expected: str
) -> None:
    async with recorder.client() as client:
        with pytest.raises(ConfigurationError) as info:
            await client.read("Patient", bad)
    assert recorder.requests == []
    message = str(info.value)
    assert expected in message
    assert "FHIR ids are" in message or "empty" in message  # says what a valid id looks like
    if len(bad) > 3:
        assert bad not in message  # an id names a patient's record: never echoed


async def test_read_refuses_a_non_string_id(recorder: Recorder) -> None:
    async with recorder.client() as client:
        with pytest.raises(ConfigurationError, match="must be a str, got int"):
            await client.read("Patient", 12345)  # type: ignore[call-overload]
    assert recorder.requests == []


@pytest.mark.parametrize(
    "good",
    [
        CAMILA,
        "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83",  # Epic's sandbox Group id
        "TnOZ.elPXC6zcBNFMcFA7A5KZbYxo2.4T-LylRk4GoW4B",
        "x" * 90,  # Epic's bulk ids exceed R4's 64 characters
        "1",
    ],
)
async def test_read_sends_a_valid_id_verbatim(recorder: Recorder, good: str) -> None:
    async with recorder.client() as client:
        await client.read("Patient", good)
    assert [str(r.url) for r in recorder.requests] == [f"{BASE}/Patient/{good}"]


@pytest.mark.parametrize(
    ("bad", "suggestion"),
    [
        ("patient", "did you mean 'Patient'?"),
        ("PATIENT", "did you mean 'Patient'?"),
        ("allergyintolerance", "did you mean 'AllergyIntolerance'?"),
        ("Allergyintolerance", "did you mean 'AllergyIntolerance'?"),
        ("widget", "did you mean 'Widget'?"),  # not an R4 type: the capitalised spelling is suggested
    ],
)
async def test_wrong_case_type_gets_a_did_you_mean(recorder: Recorder, bad: str, suggestion: str) -> None:
    async with recorder.client() as client:
        with pytest.raises(ConfigurationError) as info:
            await client.read(bad, CAMILA)
    assert suggestion in str(info.value)
    assert recorder.requests == []


@pytest.mark.parametrize(
    "bad", ["Patient/erXuFYUfucBZaryVksYEcMg3", "Observation?patient=x", "", "Pa tient", "$export"]
)
async def test_malformed_type_is_refused_without_echoing_it(recorder: Recorder, bad: str) -> None:
    async with recorder.client() as client:
        with pytest.raises(ConfigurationError, match="resource type") as info:
            await client.read(bad, CAMILA)
    assert recorder.requests == []
    if "/" in bad or "?" in bad:
        assert CAMILA not in str(info.value)
        assert "pass the type alone" in str(info.value)


async def test_a_type_shaped_name_outside_r4_is_left_to_the_server(recorder: Recorder) -> None:
    # Servers may add types; Epic answers unknown ones with its IIS 404 (already a typed error).
    assert check_type("BulkRequest") == "BulkRequest"


async def test_search_validates_the_type(recorder: Recorder) -> None:
    async with recorder.client() as client:
        with pytest.raises(ConfigurationError, match="did you mean 'Observation'"):
            client.search("observation", patient=CAMILA)
        with pytest.raises(ConfigurationError, match="pass the type alone"):
            client.search("Observation?patient=x")
    assert recorder.requests == []


async def test_update_and_create_validate_type_and_id(recorder: Recorder) -> None:
    async with recorder.client() as client:
        with pytest.raises(ConfigurationError, match="not a FHIR id"):
            await client.update({"resourceType": "Observation", "id": "../Patient/x"})
        with pytest.raises(ConfigurationError, match="has no 'id'"):
            await client.update({"resourceType": "Observation"})
        with pytest.raises(ConfigurationError, match="did you mean 'Observation'"):
            await client.create({"resourceType": "observation"})
        with pytest.raises(ConfigurationError, match="has no 'resourceType'"):
            await client.create({"status": "final"})
        await client.update({"resourceType": "Observation", "id": "obs-1.2"})
    assert [(r.method, str(r.url)) for r in recorder.requests] == [("PUT", f"{BASE}/Observation/obs-1.2")]


async def test_operation_validates_every_path_part(recorder: Recorder) -> None:
    async with recorder.client() as client:
        with pytest.raises(ConfigurationError, match="operation name"):
            await client.operation("everything/../../metadata", type="Patient", id=CAMILA)
        with pytest.raises(ConfigurationError, match="not a FHIR id"):
            await client.operation("everything", type="Patient", id="x?y=1")
        with pytest.raises(ConfigurationError, match="needs type="):
            await client.operation("everything", id=CAMILA)
        with pytest.raises(ConfigurationError, match="did you mean 'Patient'"):
            await client.operation("$everything", type="patient", id=CAMILA)
        await client.operation("everything", type="Patient", id=CAMILA)
        await client.operation("$match", type="Patient", parameters={"resourceType": "Parameters"})
    assert [(r.method, str(r.url)) for r in recorder.requests] == [
        ("GET", f"{BASE}/Patient/{CAMILA}/$everything"),
        ("POST", f"{BASE}/Patient/$match"),
    ]


async def test_binary_accepts_ids_references_and_urls_only(recorder: Recorder) -> None:
    async with recorder.client() as client:
        for bad in ("Binary/../metadata", "Observation/abc", "a b", "Binary/x?y"):
            with pytest.raises(ConfigurationError):
                await client.binary(bad)
        assert recorder.requests == []
        await client.binary("abc.1")
        await client.binary("Binary/abc.2")
        await client.binary(f"{BASE}/Binary/abc.3")
    assert [str(r.url) for r in recorder.requests] == [f"{BASE}/Binary/abc.{n}" for n in (1, 2, 3)]


async def test_bulk_export_validates_the_group_id(recorder: Recorder) -> None:
    async with recorder.client() as client:
        with pytest.raises(ConfigurationError, match="group id"):
            client.bulk_export("../../$export")
    assert recorder.requests == []


def test_validators_return_the_value() -> None:
    assert check_id(CAMILA) == CAMILA
    assert check_type("Patient") == "Patient"
    assert check_operation("everything") == check_operation("$everything") == "$everything"


async def test_sandbox_read_works_and_traversal_never_reaches_it(sandbox_client: EpicFHIRClient) -> None:
    async with sandbox_client as client:
        patient = await client.read("Patient", CAMILA)
        assert patient["id"] == CAMILA
        with pytest.raises(ConfigurationError):
            await client.read("Patient", "../metadata")  # would have fetched the CapabilityStatement
        with pytest.raises(ConfigurationError, match="did you mean 'Patient'"):
            await client.read("patient", CAMILA)  # Epic: an IIS HTML 404 instead of a clear error
