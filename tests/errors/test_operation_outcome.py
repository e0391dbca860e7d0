"""OperationOutcome parsing is total: any JSON gives a result or None, never an exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from epic_fhir_async import OperationOutcome, OutcomeIssue

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_from_json_never_raises(value: Any) -> None:
    result = OperationOutcome.from_json(value)
    assert result is None or isinstance(result, OperationOutcome)


@given(st.lists(json_values, max_size=5))
def test_issue_lists_of_anything_parse(issues: list[Any]) -> None:
    outcome = OperationOutcome.from_json({"resourceType": "OperationOutcome", "issue": issues})
    assert outcome is not None
    assert len(outcome.issues) == len(issues)
    assert isinstance(str(outcome), str)


def test_epic_code_only_for_epic_systems() -> None:
    epic = OutcomeIssue.from_json(
        {
            "severity": "fatal",
            "code": "processing",
            "details": {
                "coding": [{"system": "urn:oid:1.2.840.114350.1.13.5325.1.7.2.657369", "code": "4113"}]
            },
        }
    )
    other = OutcomeIssue.from_json(
        {
            "severity": "fatal",
            "code": "processing",
            "details": {"coding": [{"system": "http://example.org", "code": "4113"}]},
        }
    )
    assert epic.epic_code == "4113"  # a customer's arc ends in the same suffix
    assert other.epic_code is None


def test_raw_is_not_in_repr() -> None:
    outcome = OperationOutcome.from_json(
        {"resourceType": "OperationOutcome", "issue": [], "text": {"div": "Patient Camila Lopez"}}
    )
    assert outcome is not None
    assert "Camila" not in repr(outcome)
