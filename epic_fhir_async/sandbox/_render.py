"""Content negotiation and the minimal XML rendering Epic falls back to (docs/epic-notes.md §3.1).

Epic answers ``application/xml`` when the request has no ``Accept``, ``*/*`` or an unknown type; JSON only
when asked for ``application/fhir+json`` or ``application/json`` (the type is echoed). The XML here is a
plain FHIR-XML-like rendering: enough that a client which forgot its ``Accept`` header fails to parse JSON.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

from .. import _json
from ._http import FHIR_JSON_UTF8, JSON_UTF8, Request, Response

__all__ = ["fhir_response", "negotiate", "to_xml"]

XML_UTF8 = "application/xml; charset=utf-8"
_ECHOED = {
    "application/fhir+json": FHIR_JSON_UTF8,
    "application/json+fhir": FHIR_JSON_UTF8,
    "application/json": JSON_UTF8,
    "application/fhir+xml": "application/fhir+xml; charset=utf-8",
    "application/xml": XML_UTF8,
}
_FORMAT = {"json": FHIR_JSON_UTF8, "xml": XML_UTF8}


def negotiate(request: Request) -> str:
    """The response content type for ``request``: ``_format`` first, then the first known Accept type."""
    fmt = request.param("_format")
    if fmt is not None:
        key = fmt.strip().lower()
        if key in _FORMAT:
            return _FORMAT[key]
        if key in _ECHOED:
            return _ECHOED[key]
    for part in request.headers.get("accept", "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in _ECHOED:
            return _ECHOED[media]
    return XML_UTF8


def fhir_response(
    request: Request,
    data: Any,
    status: int = 200,
    *,
    headers: list[tuple[str, str]] | None = None,
    content_type: str | None = None,
) -> Response:
    """A FHIR resource (dict, or pre-rendered JSON bytes) in the negotiated format."""
    ctype = content_type or negotiate(request)
    if "json" in ctype:
        body = data if isinstance(data, bytes) else _json.dumps(data)
    else:
        resource = _json.loads(data) if isinstance(data, bytes) else data
        body = to_xml(resource)
    return Response(status, [("content-type", ctype), *(headers or [])], body)


def to_xml(resource: dict[str, Any]) -> bytes:
    """Render a JSON resource as FHIR-style XML (primitives as ``value`` attributes)."""
    parts: list[str] = ['<?xml version="1.0" encoding="utf-8"?>']
    _resource(parts, resource)
    return "".join(parts).encode("utf-8")


def _resource(parts: list[str], resource: dict[str, Any]) -> None:
    rtype = str(resource.get("resourceType", "Resource"))
    parts.append(f'<{rtype} xmlns="http://hl7.org/fhir">')
    for key, value in resource.items():
        if key != "resourceType":
            _element(parts, key, value)
    parts.append(f"</{rtype}>")


def _element(parts: list[str], name: str, value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _element(parts, name, item)
    elif isinstance(value, dict):
        if "resourceType" in value:
            parts.append(f"<{name}>")
            _resource(parts, value)
            parts.append(f"</{name}>")
            return
        attrs = f" url={quoteattr(str(value['url']))}" if name == "extension" and "url" in value else ""
        parts.append(f"<{name}{attrs}>")
        for key, child in value.items():
            if not (attrs and key == "url"):
                _element(parts, key, child)
        parts.append(f"</{name}>")
    elif name == "div":
        parts.append(escape(str(value)))
    else:
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        parts.append(f"<{name} value={quoteattr(text)}/>")
