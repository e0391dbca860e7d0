"""Patient search: demographics or ``_id``/``identifier``; weak single params find nobody.

Epic's rules for it: docs/epic-notes.md §3.3.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._http import EPIC_TEXT, outcome_issue

__all__ = [
    "PATIENT_DEMOGRAPHICS",
    "SearchFailure",
    "SearchResult",
    "fatal",
    "identifier_match",
    "patient_search",
]

PATIENT_DEMOGRAPHICS = frozenset(
    {"family", "given", "name", "birthdate", "gender", "address", "address-city", "address-postalcode",
     "address-state", "telecom", "phone", "email", "legal-sex", "own-name", "own-prefix"}
)  # fmt: skip


@dataclass
class SearchResult:
    """Matching ids (in Epic's order) and the issues of the trailing outcome entry (may be empty)."""

    ids: list[str]
    issues: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SearchFailure:
    """A rejected search: HTTP status and the OperationOutcome issues (ignored-parameter notes first)."""

    status: int
    issues: list[dict[str, Any]]


def fatal(status: int, code: str, epic: str, text: str, diagnostics: str, **kw: Any) -> SearchFailure:
    """A failure with one fatal issue in Epic's code system."""
    return SearchFailure(status, [outcome_issue("fatal", code, epic, text, diagnostics=diagnostics, **kw)])


def patient_search(
    values: dict[str, list[str]], pool: Mapping[str, dict[str, Any]]
) -> SearchResult | SearchFailure:
    """Demographics or _id/identifier; a single weak parameter finds nobody (200, total 0).

    Epic's Patient search rules: docs/epic-notes.md §3.3.
    """
    issues: list[dict[str, Any]] = []
    births = values.get("birthdate", [])
    if len(births) > 1 or any(b[:2].isalpha() and b[:2] != "eq" for b in births):
        # docs/epic-notes.md §3.3: a birthdate range is refused and the birthdate dropped; with nothing else
        # to search by, Epic adds the demographics issue too (two issues, one 400).
        issues.append(
            outcome_issue(
                "fatal", "value", "59111", "Required element has an invalid value.",
                diagnostics="A single valid date is required for birthdate", location=["/f:birthdate"],
            )
        )  # fmt: skip
    demo = [name for name in values if name in PATIENT_DEMOGRAPHICS and not (issues and name == "birthdate")]
    if "_id" not in values and "identifier" not in values and not demo:
        issues.append(
            outcome_issue(
                "fatal", "business-rule", "59159", EPIC_TEXT["59159"],
                diagnostics="This resource requires demographics or _id parameter for searching.",
                location=["/f:demographics/_id"],
            )
        )  # fmt: skip
    if issues:
        return SearchFailure(400, issues)
    if "_id" in values:
        wanted = {i for v in values["_id"] for i in v.split(",")}
        candidates = [i for i in pool if i in wanted]
    else:
        candidates = list(pool)
    if "identifier" in values:
        candidates = [
            i for i in candidates if all(identifier_match(pool[i], v) for v in values["identifier"])
        ]
    elif "_id" not in values and len(set(demo)) < 2:
        return SearchResult([])  # only strong demographic matches are returned
    return SearchResult([i for i in candidates if all(_demo_match(pool[i], n, values[n]) for n in demo)])


def identifier_match(patient: dict[str, Any], raw: str) -> bool:
    """``value``, ``system|value`` or, as Epic also takes, ``<ID type>|value`` (``EPI|203711``)."""
    system, bar, value = raw.rpartition("|")
    for ident in patient.get("identifier", []):
        text = str(ident.get("value", "")).strip()
        kind = ident.get("type", {}).get("text") if isinstance(ident.get("type"), dict) else None
        if text == value.strip() and (not bar or not system or system in (ident.get("system"), kind)):
            return True
    return False


def _demo_match(patient: dict[str, Any], name: str, raws: list[str]) -> bool:
    for raw in raws:
        want = raw.strip().lower()
        if name in ("family", "given", "name", "own-name"):
            names = patient.get("name", [])
            hay = [n.get("family", "") for n in names] if name == "family" else []
            if name != "family":
                hay = [g for n in names for g in n.get("given", [])]
                if name != "given":
                    hay += [n.get("family", "") for n in names] + [n.get("text", "") for n in names]
            if not any(h.lower().startswith(want) for h in hay):
                return False
        elif name == "birthdate":
            if patient.get("birthDate") != want.removeprefix("eq"):
                return False
        elif name in ("gender", "legal-sex"):
            if patient.get("gender") != want:
                return False
        elif name == "own-prefix":
            if not any(
                p.lower().startswith(want) for n in patient.get("name", []) for p in n.get("prefix", [])
            ):
                return False
        elif name in ("telecom", "phone", "email"):
            if not any(want in str(t.get("value", "")).lower() for t in patient.get("telecom", [])):
                return False
        elif name.startswith("address"):
            key = {"address-city": "city", "address-state": "state", "address-postalcode": "postalCode"}.get(
                name
            )
            found = False
            for addr in patient.get("address", []):
                hay = [addr.get(key, "")] if key else [*addr.get("line", []), addr.get("city", "")]
                found = found or any(want in str(h).lower() for h in hay)
            if not found:
                return False
    return True
