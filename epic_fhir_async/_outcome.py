"""OperationOutcome parsing (pure, no I/O): Epic puts every useful fact about a failure in one.

Epic issues carry ``details.coding[0]`` in the system ``urn:oid:...7.2.657369`` with a numeric code (59008,
4113, ...), plus ``details.text``, ``diagnostics``, ``location`` and ``expression``; one outcome often mixes
severities (docs/epic-notes.md §3.8). We keep every issue, never only the first, up to
:data:`MAX_OUTCOME_ISSUES` (Epic's outcomes hold a handful; a hostile server's million issues must not cost
gigabytes), and messages show at most :data:`SHOWN_ISSUES` of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._config import EPIC_OUTCOME_SYSTEM_SUFFIX

__all__ = ["MAX_OUTCOME_ISSUES", "SHOWN_ISSUES", "OperationOutcome", "OutcomeIssue", "outcome_summary"]

#: Issues parsed and kept per OperationOutcome; the rest are counted in ``OperationOutcome.omitted``.
MAX_OUTCOME_ISSUES = 100
#: Issues named in ``str()`` and in error messages; the rest are counted ("and 12 more").
SHOWN_ISSUES = 10


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _str_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


@dataclass(frozen=True, slots=True)
class OutcomeIssue:
    """One ``OperationOutcome.issue``; ``epic_code`` is Epic's numeric code when its code system is used."""

    severity: str | None
    code: str | None
    details_code: str | None = None
    details_system: str | None = None
    details_text: str | None = None
    # Free text: Epic puts patient names, MRNs and search values there, so it stays out of repr() and str().
    diagnostics: str | None = field(default=None, repr=False)
    location: tuple[str, ...] = ()
    expression: tuple[str, ...] = ()

    @property
    def epic_code(self) -> str | None:
        """Epic's code (e.g. ``"4113"``) when the details coding uses an Epic OperationOutcome system."""
        system = self.details_system or ""
        if self.details_code and system.endswith(EPIC_OUTCOME_SYSTEM_SUFFIX):
            return self.details_code
        return None

    @property
    def message(self) -> str:
        """The most specific human text: diagnostics, else details text, else the issue code."""
        return self.diagnostics or self.details_text or self.code or "unknown issue"

    @classmethod
    def from_json(cls, issue: Any) -> OutcomeIssue:
        if not isinstance(issue, Mapping):
            return cls(severity=None, code=None, diagnostics=None)
        details = issue.get("details")
        d_code = d_system = d_text = None
        if isinstance(details, Mapping):
            d_text = _str_or_none(details.get("text"))
            codings = details.get("coding")
            if isinstance(codings, list):
                for coding in codings:
                    if isinstance(coding, Mapping) and coding.get("code") is not None:
                        d_code = str(coding.get("code"))
                        d_system = _str_or_none(coding.get("system"))
                        d_text = d_text or _str_or_none(coding.get("display"))
                        break
        return cls(
            severity=_str_or_none(issue.get("severity")),
            code=_str_or_none(issue.get("code")),
            details_code=d_code,
            details_system=d_system,
            details_text=d_text,
            diagnostics=_str_or_none(issue.get("diagnostics")),
            location=_str_tuple(issue.get("location")),
            expression=_str_tuple(issue.get("expression")),
        )


@dataclass(frozen=True, slots=True)
class OperationOutcome:
    """A parsed OperationOutcome; ``raw`` keeps the resource exactly as it came.

    ``issues`` holds the first :data:`MAX_OUTCOME_ISSUES` issues; ``omitted`` counts the ones beyond.
    """

    issues: tuple[OutcomeIssue, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    omitted: int = 0

    @classmethod
    def from_json(cls, resource: Any) -> OperationOutcome | None:
        """Parse ``resource`` if it is an OperationOutcome, else return ``None``."""
        if not isinstance(resource, Mapping) or resource.get("resourceType") != "OperationOutcome":
            return None
        issues = resource.get("issue")
        if not isinstance(issues, list):
            return cls(issues=(), raw=resource)
        parsed = tuple(OutcomeIssue.from_json(i) for i in issues[:MAX_OUTCOME_ISSUES])
        return cls(issues=parsed, raw=resource, omitted=max(0, len(issues) - MAX_OUTCOME_ISSUES))

    @property
    def _more(self) -> str:
        more = max(0, len(self.issues) - SHOWN_ISSUES) + self.omitted
        return f"; and {more} more issue(s)" if more else ""

    @property
    def epic_codes(self) -> tuple[str, ...]:
        return tuple(c for c in (i.epic_code for i in self.issues) if c is not None)

    def has_epic_code(self, code: str) -> bool:
        return code in self.epic_codes

    @property
    def primary(self) -> OutcomeIssue | None:
        """The most severe issue (fatal > error > warning > information), first of equals."""
        order = {"fatal": 0, "error": 1, "warning": 2, "information": 3}
        if not self.issues:
            return None
        return min(self.issues, key=lambda i: order.get(i.severity or "", 4))

    def __str__(self) -> str:
        parts = []
        for issue in self.issues[:SHOWN_ISSUES]:
            code = f" [{issue.epic_code}]" if issue.epic_code else ""
            # details.text is Epic's fixed text for the code; diagnostics may hold patient data (logs, tracebacks).
            text = issue.details_text or issue.code or "unknown issue"
            withheld = " (diagnostics withheld: see .issues)" if issue.diagnostics else ""
            parts.append(f"{issue.severity or '?'}/{issue.code or '?'}{code}: {text}{withheld}")
        return "; ".join(parts) + self._more if parts else "OperationOutcome without issues"


def _issue_summary(item: OutcomeIssue) -> str:
    # Severity, code and Epic's code text (a fixed table, docs/epic-notes.md §3.8) only: diagnostics and
    # free text can name a patient, so they stay on the error object.
    epic = item.epic_code
    text = f"{item.severity or '?'}/{item.code or '?'}"
    if epic:
        text += f" [{epic}]"
        if item.details_text:
            text += f" {item.details_text}"
    return text


def outcome_summary(outcome: OperationOutcome) -> str:
    """A one-line summary of ``outcome`` safe for messages and logs (no ``diagnostics``)."""
    shown = outcome.issues[:SHOWN_ISSUES]
    text = "; ".join(_issue_summary(issue) for issue in shown) or "OperationOutcome without issues"
    if any(issue.diagnostics for issue in shown):
        text += " (diagnostics withheld: see .issues)"
    return text + outcome._more if shown else text
