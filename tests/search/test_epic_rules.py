"""``client.search()`` checks Epic's search requirements before sending (docs/epic-notes.md §3.3), against the
emulator: a search Epic refuses (or answers with nothing) raises ConfigurationError and no request is made;
``epic_rules=False`` on the client, or ``query.with_epic_rules(False)``, sends it as it is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from epic_fhir_async import BadRequest, ConfigurationError, EpicFHIRClient, PullError, StaticTokenAuth
from epic_fhir_async.sandbox import EpicSandbox, SandboxClock

pytestmark = pytest.mark.anyio

CAMILA = "erXuFYUfucBZaryVksYEcMg3"


@pytest.fixture
def sb() -> EpicSandbox:
    return EpicSandbox(seed=0, patients=4, clock=SandboxClock(frozen_at=1_780_000_000.0))


@pytest.fixture
async def client(sb: EpicSandbox) -> AsyncIterator[EpicFHIRClient]:
    auth = StaticTokenAuth(sb.issue_token("rules", lifetime=1e9))
    async with EpicFHIRClient(sb.base_url, auth=auth, transport=sb.transport()) as c:
        yield c


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("Observation", {"patient": CAMILA}, "category= or code="),
    ("Observation", {"patient": CAMILA, "category": "procedure"}, "procedure"),
    ("Observation", {"patient": CAMILA, "category": "vital-signs,therapy"}, "therapy"),
    ("Observation", {"category": "laboratory"}, "patient="),
    ("Condition", {"category": "problem-list-item"}, "patient="),
    ("AllergyIntolerance", {}, "403"),
    ("CarePlan", {"patient": CAMILA}, "category="),
    ("EpisodeOfCare", {"patient": CAMILA, "type:not": "urn:oid:1.2.3|1"}, "type=system|code"),
    ("EpisodeOfCare", {"patient": CAMILA, "type": "1"}, "type=system|code"),
    ("Patient", {}, "_id=, identifier= or demographics"),
    ("Patient", {"family": "Lopez"}, "family= alone"),
    ("Patient", {"birthdate": "1987-09-12"}, "birthdate= alone"),
    ("Patient", {"family": "Lopez", "birthdate": ["ge1980-01-01", "le1990-01-01"]}, "one date"),
    ("Patient", {"patient": CAMILA}, "_id="),
]


@pytest.mark.parametrize(("rtype", "params", "says"), REFUSED)
async def test_a_search_epic_refuses_raises_before_any_request(
    sb: EpicSandbox, client: EpicFHIRClient, rtype: str, params: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigurationError, match=r"docs/epic-notes\.md §3\.3") as info:
        async for _ in client.search(rtype, **params):
            pass
    assert says in str(info.value)
    assert "epic_rules=False" in str(info.value)  # how to turn it off for another server
    assert CAMILA not in str(info.value)  # names parameters, never their values
    assert sb.stats["fhir_requests"] == 0


async def test_first_and_count_are_checked_too(sb: EpicSandbox, client: EpicFHIRClient) -> None:
    with pytest.raises(ConfigurationError):
        await client.search("Observation", patient=CAMILA).first()
    with pytest.raises(ConfigurationError):
        await client.search("Observation", patient=CAMILA).count()
    assert sb.stats["fhir_requests"] == 0


@pytest.mark.parametrize(
    ("rtype", "params"),
    [
        ("Observation", {"patient": CAMILA, "category": "laboratory"}),
        ("Observation", {"subject": f"Patient/{CAMILA}", "code": "http://loinc.org|4548-4"}),
        ("Condition", {"patient.identifier": "E4007"}),
        ("Patient", {"family": "Lopez", "birthdate": "1987-09-12"}),
        ("Patient", {"identifier": "E4007"}),
        ("Patient", {"_id": CAMILA}),
        ("CarePlan", {"patient": CAMILA, "category": "38717003"}),
        ("Encounter", {"patient": CAMILA, "class": "4"}),
    ],
)
async def test_searches_that_meet_the_rules_are_sent(
    sb: EpicSandbox, client: EpicFHIRClient, rtype: str, params: dict[str, Any]
) -> None:
    [r async for r in client.search(rtype, **params)]
    assert sb.stats["fhir_requests"] == 1


async def test_the_check_waits_for_where(client: EpicFHIRClient) -> None:
    # Built step by step: the query is checked when it is sent, not when it is made.
    query = client.search("Observation").where(patient=CAMILA).where(category="laboratory")
    assert [r["resourceType"] async for r in query] == ["Observation"] * 5


async def test_epic_rules_off_on_the_client_sends_and_epic_answers(sb: EpicSandbox) -> None:
    auth = StaticTokenAuth(sb.issue_token("rules", lifetime=1e9))
    async with EpicFHIRClient(sb.base_url, auth=auth, transport=sb.transport(), epic_rules=False) as client:
        assert client.search("Observation").epic_rules is False
        with pytest.raises(BadRequest) as info:
            async for _ in client.search("Observation", patient=CAMILA):
                pass
    assert info.value.operation_outcome is not None
    assert info.value.operation_outcome.has_epic_code("59108")
    assert sb.stats["fhir_requests"] == 1


async def test_epic_rules_per_query(sb: EpicSandbox, client: EpicFHIRClient) -> None:
    query = client.search("Observation", patient=CAMILA)
    assert query.epic_rules is True
    with pytest.raises(BadRequest):
        await query.with_epic_rules(False).first()
    assert sb.stats["fhir_requests"] == 1
    with pytest.raises(ConfigurationError):
        await query.with_epic_rules(False).with_epic_rules(True).first()
    assert sb.stats["fhir_requests"] == 1


async def test_the_pull_still_expands_a_bare_observation(sb: EpicSandbox, client: EpicFHIRClient) -> None:
    async with client.pull([CAMILA], ["Observation", "Patient"]) as stream:
        items = [item async for item in stream]
    queries = {item.query for item in items}
    assert "Observation?category=laboratory" in queries
    assert "Patient" in {item.resource_type for item in items}


async def test_a_pull_template_epic_refuses_ends_the_pull_before_it_is_sent(
    sb: EpicSandbox, client: EpicFHIRClient
) -> None:
    with pytest.raises(PullError) as info:
        async with client.pull([CAMILA, "eq081-VQEgP8drUUqCWzHfw3"], ["Observation"], expand=False) as stream:
            [item async for item in stream]
    assert isinstance(info.value.__cause__, ConfigurationError)
    assert sb.stats["fhir_requests"] == 0
