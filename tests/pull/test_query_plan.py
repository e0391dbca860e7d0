"""Epic's search rules as applied by the pull's query expansion."""

from __future__ import annotations

import pytest

from epic_fhir_async import ConfigurationError
from epic_fhir_async.pull._queries import EpicExpansion, PullQuery, expand_queries, parse_template


def labels(*types: str, expand: bool | EpicExpansion = True) -> list[str]:
    return [q.label for q in expand_queries(types, expand)]


def test_bare_observation_becomes_one_search_per_required_category() -> None:
    assert labels("Observation") == [
        "Observation?category=vital-signs",
        "Observation?category=laboratory",
        "Observation?category=social-history",
    ]


def test_observation_categories_are_configurable() -> None:
    rules = EpicExpansion(observation_categories=("laboratory", "exam", "survey", "imaging"))
    assert labels("Observation", expand=rules) == [
        "Observation?category=laboratory",
        "Observation?category=exam",
        "Observation?category=survey",
        "Observation?category=imaging",
    ]


@pytest.mark.parametrize("category", ["procedure", "therapy", "activity"])
def test_categories_epic_rejects_are_refused_up_front(category: str) -> None:
    with pytest.raises(ConfigurationError, match=category):
        EpicExpansion(observation_categories=("laboratory", category))
    with pytest.raises(ConfigurationError, match=category):
        expand_queries([f"Observation?category={category}"])


def test_observation_with_category_or_code_is_kept_with_its_filters() -> None:
    assert labels(
        "Observation?category=laboratory&date=ge2024-01-01", "Observation?code=http://loinc.org|718-7"
    ) == [
        "Observation?category=laboratory&date=ge2024-01-01",
        "Observation?code=http%3A%2F%2Floinc.org%7C718-7",
    ]


def test_patient_is_a_read_through_id() -> None:
    (query,) = expand_queries(["Patient"])
    assert query.params_for("abc") == {"_id": "abc"}
    assert query.label == "Patient"


def test_clinical_types_get_the_patient_parameter() -> None:
    queries = expand_queries(["Condition", "AllergyIntolerance", "MedicationRequest?status=active"])
    assert [q.params_for("p1") for q in queries] == [
        {"patient": "p1"},
        {"patient": "p1"},
        {"status": "active", "patient": "p1"},
    ]


def test_careplan_gets_a_category_and_episode_of_care_a_type() -> None:
    assert labels("CarePlan") == ["CarePlan?category=38717003", "CarePlan?category=734163000"]
    with pytest.raises(ConfigurationError, match="type=system"):
        expand_queries(["EpisodeOfCare"])
    rules = EpicExpansion(episode_of_care_types=("urn:oid:1.2.3|2",))
    assert labels("EpisodeOfCare", expand=rules) == ["EpisodeOfCare?type=urn%3Aoid%3A1.2.3%7C2"]
    assert labels("EpisodeOfCare?type=x|1") == ["EpisodeOfCare?type=x%7C1"]


def test_expansion_off_uses_templates_verbatim_with_patient() -> None:
    queries = expand_queries(["Observation", "Patient", "CarePlan"], expand=False)
    assert [q.label for q in queries] == ["Observation", "Patient", "CarePlan"]
    assert all(q.params_for("p") == {"patient": "p"} for q in queries)


def test_duplicates_are_removed_and_repeated_params_kept() -> None:
    assert labels("Observation", "Observation?category=laboratory", "Condition", "Condition") == [
        "Observation?category=vital-signs",
        "Observation?category=laboratory",
        "Observation?category=social-history",
        "Condition",
    ]
    query = PullQuery("Observation", (("category", "laboratory"), ("date", "ge2024"), ("date", "le2025")))
    assert query.params_for("p") == {"category": "laboratory", "date": ["ge2024", "le2025"], "patient": "p"}


@pytest.mark.parametrize(
    "template", ["", "observation", "Condition?patient=x", "Encounter?subject=Patient/x", "Practitioner"]
)
def test_bad_templates_are_configuration_errors(template: str) -> None:
    with pytest.raises(ConfigurationError):
        expand_queries([template])


def test_parse_template_keeps_order() -> None:
    assert parse_template("Condition?category=problem-list-item&clinical-status=active") == (
        "Condition",
        (("category", "problem-list-item"), ("clinical-status", "active")),
    )
