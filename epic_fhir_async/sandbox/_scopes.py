"""The ``scope`` of a backend token response, in the style the client's app registration picked.

Epic's scope styles: docs/epic-notes.md §1.6, §2.8.

Epic derives the granted scope from the app's Incoming APIs, not from the request. Three wire styles exist:
SMART v1 (``system/Patient.read``), SMART v2 (``system/Patient.r system/Patient.s``, sub-type grants as
``system/Observation.r?category=<system>|<code>``; apps that chose "SMART v2" since Aug/Nov 2024) and Epic's
legacy context-less form (``Patient.read Patient.search``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

__all__ = ["SCOPE_STYLES", "ScopeStyle", "scope_string"]

ScopeStyle = Literal["v1", "v2", "epic"]
SCOPE_STYLES: tuple[str, ...] = ("v1", "v2", "epic")

#: Category systems for sub-type grants written as ``Type?category=<code>`` (v2 scopes carry system|code).
_CATEGORY_SYSTEMS = {
    "Observation": "http://terminology.hl7.org/CodeSystem/observation-category",
    "Condition": "http://terminology.hl7.org/CodeSystem/condition-category",
    "DocumentReference": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
}


def _v2_query(rtype: str, query: str) -> str:
    name, _, value = query.partition("=")
    system = _CATEGORY_SYSTEMS.get(rtype)
    if name == "category" and "|" not in value and system is not None:
        value = f"{system}|{value}"
    return f"?{name}={value}"


def scope_string(grants: Iterable[str], style: ScopeStyle = "v1", *, context: str = "system") -> str:
    """Space-separated scopes for ``grants`` (``"Patient"`` or ``"Observation?category=laboratory"`` entries)."""
    if style not in SCOPE_STYLES:
        raise ValueError(f"scope style must be one of {', '.join(SCOPE_STYLES)}")
    scopes: list[str] = []
    for grant in sorted(grants):
        rtype, _, query = grant.partition("?")
        if style == "v2":
            suffix = _v2_query(rtype, query) if query else ""
            scopes += [f"{context}/{rtype}.r{suffix}", f"{context}/{rtype}.s{suffix}"]
        elif style == "epic":
            scopes += [f"{rtype}.read", f"{rtype}.search"]
        else:  # v1 cannot express sub-types: the type's scope stands for every granted sub-type
            scopes.append(f"{context}/{rtype}.read")
    return " ".join(dict.fromkeys(scopes))
