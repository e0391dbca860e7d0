"""Epic's public endpoint directory and SMART brands bundle, served offline (docs/epic-notes.md §5.1).

``open.epic.com/Endpoints/R4`` is a ``collection`` Bundle of Endpoints, each with a contained Organization (id a
base64 hash), ``connectionType`` hl7-fhir-rest, plan-net payload type ``NA``, Epic's four payload MIME types and
an ``address`` ending ``/api/FHIR/R4/``. ``/Endpoints/Brands`` is a SMART User-access Brands bundle: Organizations
plus Endpoints whose ``managingOrganization`` is a logical reference (identifier system
``https://fhir.epic.com/Developer/Management/OrganizationId``). The sandbox lists itself first, then the
configured extra ``(name, address)`` pairs, so discovery code can be tested without the network. Bodies are
rendered once per origin and cached.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from .. import _json
from ._http import JSON_UTF8, Response

__all__ = ["BRANDS_PATH", "DIRECTORY_PATH", "Directory"]

DIRECTORY_PATH = "/Endpoints/R4"
BRANDS_PATH = "/Endpoints/Brands"
_MANAGEMENT_ID = "https://fhir.epic.com/Developer/Management/OrganizationId"
_CONNECTION = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "hl7-fhir-rest",
}
_PLAN_NET_NA = {
    "coding": [
        {
            "system": "http://hl7.org/fhir/us/davinci-pdex-plan-net/CodeSystem/EndpointPayloadTypeCS",
            "code": "NA",
        }
    ]
}
_NO_PAYLOAD = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "code": "none"}]
}
_MIME_TYPES = [
    "application/fhir+json",
    "application/json+fhir",
    "application/xml+fhir",
    "application/fhir+xml",
]
_TIMESTAMP = "2026-02-09T00:00:00Z"  # the emulated Epic version's release date, so bodies are stable
_SANDBOX_NAME = "Epic Sandbox Emulator (epic_fhir_async)"


def _hash_id(text: str, size: int = 18) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()[:size]
    return base64.b64encode(digest, altchars=b".-").decode("ascii").rstrip("=")


def _management_id(address: str) -> str:
    return str(int.from_bytes(hashlib.sha256(address.encode("utf-8")).digest()[:3], "big"))


def _endpoint_directory(entries: Sequence[tuple[str, str]]) -> dict[str, Any]:
    items = []
    for name, address in entries:
        org_id = _hash_id(f"org:{address}")
        items.append(
            {
                "fullUrl": address,
                "resource": {
                    "resourceType": "Endpoint",
                    "id": _hash_id(f"endpoint:{address}", 12),
                    "contained": [{"resourceType": "Organization", "id": org_id, "name": name}],
                    "status": "active",
                    "connectionType": _CONNECTION,
                    "name": name,
                    "managingOrganization": {"reference": f"#{org_id}"},
                    "period": {"start": "2021-08-01"},
                    "payloadType": [_PLAN_NET_NA],
                    "payloadMimeType": _MIME_TYPES,
                    "address": address,
                },
            }
        )
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": _TIMESTAMP,
        "total": len(items),
        "entry": items,
    }


def _brands(entries: Sequence[tuple[str, str]], base: str) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for name, address in entries:
        org_id, endpoint_id = _hash_id(f"org:{address}"), _hash_id(f"endpoint:{address}", 12)
        management = {"system": _MANAGEMENT_ID, "value": _management_id(address)}
        organization = {
            "resourceType": "Organization",
            "id": org_id,
            "identifier": [management],
            "active": True,
            "name": name,
            "endpoint": [{"reference": f"Endpoint/{endpoint_id}"}],
        }
        endpoint = {
            "resourceType": "Endpoint",
            "id": endpoint_id,
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/endpoint-fhir-version", "valueCode": "4.0.1"}
            ],
            "status": "active",
            "connectionType": _CONNECTION,
            "name": name,
            "managingOrganization": {"identifier": management, "display": name},
            "payloadType": [_NO_PAYLOAD],
            "address": address,
        }
        items.append({"fullUrl": f"{base}/Organization/{org_id}", "resource": organization})
        items.append({"fullUrl": f"{base}/Endpoint/{endpoint_id}", "resource": endpoint})
    return {"resourceType": "Bundle", "type": "collection", "timestamp": _TIMESTAMP, "entry": items}


class Directory:
    """Answers ``GET /Endpoints/R4`` and ``GET /Endpoints/Brands`` (no authentication, JSON only)."""

    def __init__(self, extra: Sequence[tuple[str, str]] = ()) -> None:
        for item in extra:
            if len(item) != 2 or not all(isinstance(part, str) and part for part in item):
                raise ValueError("directory entries are (name, FHIR base URL) pairs")
        self.extra = tuple(extra)
        self._cache: dict[tuple[str, str], bytes] = {}

    def handle(self, path: str, method: str, *, origin: str, base_url: str) -> Response | None:
        """The body for ``path``, or None when ``path`` is not a directory path."""
        if path not in (DIRECTORY_PATH, BRANDS_PATH) or method != "GET":
            return None
        key = (path, origin)
        body = self._cache.get(key)
        if body is None:
            entries = [(_SANDBOX_NAME, f"{base_url}/"), *self.extra]
            data = (
                _endpoint_directory(entries)
                if path == DIRECTORY_PATH
                else _brands(entries, f"{origin}{path}")
            )
            body = self._cache[key] = _json.dumps(data)
        return Response(200, [("content-type", JSON_UTF8)], body)
