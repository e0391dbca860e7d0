"""Minimal HTTP primitives shared by the sandbox's parts (routing, OAuth, FHIR, bulk).

The sandbox is a plain ASGI app with no web framework: a parsed :class:`Request` goes in, a
:class:`Response` comes out. Helpers here build Epic-shaped answers (OperationOutcomes with Epic's code
system, the IIS HTML 404 page) so that every part speaks the same dialect.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from .. import _json
from .._config import EPIC_OUTCOME_SYSTEM

__all__ = [
    "EPIC_TEXT",
    "FHIR_JSON_UTF8",
    "JSON_UTF8",
    "Request",
    "Response",
    "html_404",
    "json_response",
    "outcome",
    "outcome_entry",
    "outcome_issue",
    "outcome_response",
]

FHIR_JSON_UTF8 = "application/fhir+json; charset=utf-8"
JSON_UTF8 = "application/json; charset=utf-8"

#: Epic's display text for the codes whose text has been recorded from its servers (docs/epic-notes.md §3.8);
#: it is both ``details.coding[0].display`` and ``details.text``.
EPIC_TEXT: dict[str, str] = {
    "4101": "Resource request returns no results.",
    "4113": "Session ID for cached search results has expired.",
    "59008": "The FHIR ID provided was not found.",
    "59100": "Content invalid against the specification or a profile.",
    "59159": "The content/operation failed to pass a business rule, and so could not proceed.",
    "59204": "The authenticated client's search request applies to a sub-resource that the client is not "
    "authorized for. Results of this sub-type will not be returned.",
    "59205": "The authenticated user's search request applies to a sub-resource that the user is not authorized "
    "to view. Results of this sub-type will not be returned.",
}


@dataclass
class Request:
    """An HTTP request as the sandbox sees it; header names are lower-case."""

    method: str
    path: str
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw_query: str = ""

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any], body: bytes) -> Request:
        raw_query = scope.get("query_string", b"").decode("latin-1")
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return cls(
            method=str(scope.get("method", "GET")).upper(),
            path=str(scope.get("path", "/")),
            query=parse_qsl(raw_query, keep_blank_values=True),
            headers=headers,
            body=body,
            raw_query=raw_query,
        )

    @property
    def content_type(self) -> str:
        """The media type of the body, lower-case, without parameters (``""`` when there is none)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``."""
        for key, value in self.query:
            if key == name:
                return value
        return None

    def form(self) -> list[tuple[str, str]]:
        """The body as ``application/x-www-form-urlencoded`` pairs (empty when it is not a form)."""
        if self.content_type != "application/x-www-form-urlencoded":
            return []
        return parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True)

    def form_fields(self) -> dict[str, str]:
        """:meth:`form` as a dict; a repeated field keeps its first value."""
        return first_values(self.form())


def first_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Query or form pairs as a dict in which a repeated name keeps its first value."""
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


@dataclass
class Response:
    """An HTTP response.

    ``stream``, when set, replaces ``body`` (large bulk files are generated chunk by chunk, never held whole);
    ``drop_after`` > 0 makes the server cut the connection after that many body bytes (fault injection).
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterable[bytes] | None = None
    drop_after: int = 0

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


def json_response(
    data: Any,
    status: int = 200,
    *,
    content_type: str = FHIR_JSON_UTF8,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    body = data if isinstance(data, bytes) else _json.dumps(data)
    return Response(status, [("content-type", content_type), *headers], body)


def outcome_issue(
    severity: str,
    code: str,
    epic_code: str,
    text: str,
    *,
    diagnostics: str | None = None,
    location: Iterable[str] = (),
    expression: Iterable[str] = (),
) -> dict[str, Any]:
    """One OperationOutcome issue as Epic writes it (details.coding in Epic's OID system + details.text).

    Epic pairs each ``location`` of the form ``/f:<path>`` with an ``expression`` ``<path>`` (``/f:id`` and
    ``id``, ``/f:demographics/_id`` and ``demographics/_id``, docs/epic-notes.md §3.8): unless given, the
    expression is derived that way.
    """
    issue: dict[str, Any] = {
        "severity": severity,
        "code": code,
        "details": {
            "coding": [{"system": EPIC_OUTCOME_SYSTEM, "code": epic_code, "display": text}],
            "text": text,
        },
    }
    if diagnostics is not None:
        issue["diagnostics"] = diagnostics
    loc = list(location)
    expr = list(expression) or [item[3:] for item in loc if item.startswith("/f:")]
    if loc:
        issue["location"] = loc
    if expr:
        issue["expression"] = expr
    return issue


def outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    """An OperationOutcome resource (Epic's have no id)."""
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def outcome_response(status: int, *issues: dict[str, Any], content_type: str | None = None) -> Response:
    return json_response(outcome(*issues), status, content_type=content_type or FHIR_JSON_UTF8)


def outcome_entry(resource: dict[str, Any]) -> dict[str, Any]:
    """A searchset entry carrying an OperationOutcome (``search.mode: outcome``, urn:uuid fullUrl, no id)."""
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource, "search": {"mode": "outcome"}}


_IIS_404 = (
    b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
    b'"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\r\n'
    b'<html xmlns="http://www.w3.org/1999/xhtml">\r\n<head>\r\n'
    b'<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"/>\r\n'
    b"<title>404 - File or directory not found.</title>\r\n</head>\r\n<body>\r\n"
    b'<div id="header"><h1>Server Error</h1></div>\r\n<div id="content">\r\n'
    b' <div class="content-container"><fieldset>\r\n'
    b"  <h2>404 - File or directory not found.</h2>\r\n"
    b"  <h3>The resource you are looking for might have been removed, had its name changed, or is "
    b"temporarily unavailable.</h3>\r\n </fieldset></div>\r\n</div>\r\n</body>\r\n</html>\r\n"
)


def html_404() -> Response:
    """Epic's IIS 404 page for unknown types and paths (docs/epic-notes.md §3.7): HTML, not FHIR."""
    return Response(404, [("content-type", "text/html; charset=iso-8859-1")], _IIS_404)
