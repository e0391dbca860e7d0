"""Epic's CapabilityStatement and SMART configuration (docs/epic-notes.md §3.2, §2.1).

The statement has Epic's shape (February 2026): its 59 types, per-type interactions, the declared
``searchParam``s of every searchable type, US Core ``supportedProfile``s, ``security.cors`` and the Group
operation named ``group-export``; the tables live in :mod:`._search_params`, shared with the search engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._idtoken import OIDC_KEYS_PATH
from ._search_params import (
    CREATE_TYPES,
    RESOURCE_TYPES,
    SEARCH_PARAMS,
    SEARCHABLE_TYPES,
    UPDATE_TYPES,
    US_CORE_PROFILES,
)

__all__ = [
    "CREATE_TYPES",
    "RESOURCE_TYPES",
    "UPDATE_TYPES",
    "capability_statement",
    "smart_configuration",
]

_US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def capability_statement(
    base_url: str,
    oauth_url: str,
    *,
    epic_client_id: str | None,
    register: bool | None = None,
    oauth_uris: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The statement served at ``/metadata`` without authentication.

    ``register`` appears in the oauth-uris extension only when the request carried ``Epic-Client-ID``, or as
    ``register`` says for a known client. ``oauth_uris`` overrides ``authorize``/``token`` (/``register``) for
    that client: some customers override the iss per client ID (both as at Epic, docs/epic-notes.md §2.1).
    """
    chosen = {
        "authorize": f"{oauth_url}/authorize",
        "token": f"{oauth_url}/token",
        "register": f"{oauth_url}/register",
        **(oauth_uris or {}),
    }
    if not (bool(epic_client_id) if register is None else register):
        del chosen["register"]
    uris: list[dict[str, Any]] = [{"valueUri": uri, "url": name} for name, uri in chosen.items()]
    resources = [_resource_entry(rtype) for rtype in sorted(RESOURCE_TYPES)]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "experimental": True,
        "date": "2026-02-09",
        "kind": "instance",
        "instantiates": [
            "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data",
            "http://hl7.org/fhir/us/core/CapabilityStatement/us-core-server|6.1.0",
        ],
        "software": {"name": "Epic", "version": "February 2026", "releaseDate": "2026-02-09"},
        "implementation": {"description": "Epic FHIR sandbox emulator (epic_fhir_async)", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["xml", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [{"extension": uris, "url": _OAUTH_URIS}],
                    "cors": True,
                    "service": [
                        {"coding": [{"system": _SERVICE, "code": code, "display": code}], "text": code}
                        for code in ("OAuth", "SMART-on-FHIR", "Basic")
                    ],
                },
                "resource": resources,
            }
        ],
    }


_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def _resource_entry(rtype: str) -> dict[str, Any]:
    """One ``rest.resource`` entry, keys and interactions in Epic's order."""
    entry: dict[str, Any] = {"type": rtype}
    if rtype in US_CORE_PROFILES:
        entry["supportedProfile"] = [f"{_US_CORE}{name}|6.1.0" for name in US_CORE_PROFILES[rtype]]
    codes = [
        code
        for code, present in (
            ("create", rtype in CREATE_TYPES),
            ("read", True),
            ("search-type", rtype in SEARCHABLE_TYPES),
            ("update", rtype in UPDATE_TYPES),
        )
        if present
    ]
    entry |= {
        "interaction": [{"code": code} for code in codes],
        "readHistory": False,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalRead": "not-supported",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
    }
    if rtype in SEARCHABLE_TYPES:
        entry["searchInclude"] = ["*"]
        entry["searchRevInclude"] = ["Provenance:target"]
        entry["searchParam"] = [{"name": name, "type": kind} for name, kind in SEARCH_PARAMS[rtype]]
    if rtype == "Patient":
        entry["operation"] = [
            {"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"},
            {"name": "summary", "definition": "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"},
        ]
    if rtype == "Group":
        entry["operation"] = [
            {
                "name": "group-export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
            }
        ]
    return entry


def smart_configuration(oauth_url: str) -> dict[str, Any]:
    """``[base]/.well-known/smart-configuration`` (docs/epic-notes.md §2.1); always JSON, no authentication.

    The keys, grant types, auth methods (in Epic's order), PKCE methods and capabilities are those Epic's
    production servers publish (docs/epic-notes.md §2.1).

    ``jwks_uri`` (Epic's OIDC key URL, beside ``/oauth2`` under the server root) comes with
    ``sso-openid-connect``, as the SMART spec requires for servers that issue id_tokens (Epic's:
    docs/epic-notes.md §2.5).
    """
    return {
        "issuer": oauth_url,
        "jwks_uri": oauth_url.removesuffix("/oauth2") + OIDC_KEYS_PATH,
        "authorization_endpoint": f"{oauth_url}/authorize",
        "token_endpoint": f"{oauth_url}/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "RS384", "RS512", "ES256", "ES384"],
        "grant_types_supported": [
            "authorization_code",
            "client_credentials",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
        ],
        "scopes_supported": [
            "openid",
            "fhirUser",
            "launch",
            "launch/patient",
            "offline_access",
            "online_access",
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        # The set Epic's production servers publish (docs/epic-notes.md §2.1), authorize-post included:
        # Epic accepts a form POST at authorize for EHR launches (docs/epic-notes.md §2.2).
        "capabilities": [
            "authorize-post",
            "client-confidential-asymmetric",
            "client-confidential-symmetric",
            "client-public",
            "context-banner",
            "context-ehr-encounter",
            "context-ehr-patient",
            "context-standalone-patient",
            "context-style",
            "launch-ehr",
            "launch-standalone",
            "permission-offline",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
            "sso-openid-connect",
        ],
    }
