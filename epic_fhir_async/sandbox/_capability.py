"""Epic's CapabilityStatement and SMART configuration (docs/epic-notes.md §3.2, §2.1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._idtoken import OIDC_KEYS_PATH

__all__ = [
    "CREATE_TYPES",
    "RESOURCE_TYPES",
    "UPDATE_TYPES",
    "capability_statement",
    "smart_configuration",
]

#: The resource types the sandbox knows; any other first path segment is Epic's IIS HTML 404
#: (docs/epic-notes.md §3.7).
RESOURCE_TYPES: frozenset[str] = frozenset(
    [
        "AdverseEvent",
        "AllergyIntolerance",
        "Appointment",
        "Binary",
        "BodyStructure",
        "CarePlan",
        "CareTeam",
        "Communication",
        "ConceptMap",
        "Condition",
        "Consent",
        "Contract",
        "Coverage",
        "Device",
        "DeviceRequest",
        "DeviceUseStatement",
        "DiagnosticReport",
        "DocumentReference",
        "Encounter",
        "Endpoint",
        "EpisodeOfCare",
        "ExplanationOfBenefit",
        "FamilyMemberHistory",
        "Flag",
        "Goal",
        "Group",
        "HealthcareService",
        "ImagingStudy",
        "Immunization",
        "ImmunizationRecommendation",
        "InsurancePlan",
        "List",
        "Location",
        "Measure",
        "MeasureReport",
        "Media",
        "Medication",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationRequest",
        "MedicationStatement",
        "NutritionOrder",
        "Observation",
        "Organization",
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Procedure",
        "Provenance",
        "Questionnaire",
        "QuestionnaireResponse",
        "RelatedPerson",
        "RequestGroup",
        "ResearchStudy",
        "ResearchSubject",
        "ServiceRequest",
        "Specimen",
        "Substance",
        "Task",
    ]
)
#: docs/epic-notes.md §3.2: the 11 types with ``create`` and the 7 with ``update``; nothing else is writable.
CREATE_TYPES: frozenset[str] = frozenset(
    [
        "AllergyIntolerance",
        "BodyStructure",
        "Communication",
        "ConceptMap",
        "Condition",
        "DocumentReference",
        "Observation",
        "Patient",
        "Procedure",
        "QuestionnaireResponse",
        "ServiceRequest",
    ]
)
UPDATE_TYPES: frozenset[str] = frozenset(
    [
        "BodyStructure",
        "DiagnosticReport",
        "DocumentReference",
        "Observation",
        "Procedure",
        "ServiceRequest",
        "Task",
    ]
)
#: Types without ``search-type`` in Epic's statement (59 read, 56 search-type).
_NO_SEARCH = frozenset({"Binary", "ConceptMap", "Measure"})

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
    uris: list[dict[str, Any]] = [{"url": name, "valueUri": uri} for name, uri in chosen.items()]
    resources = []
    for rtype in sorted(RESOURCE_TYPES):
        interactions = [{"code": "read"}]
        if rtype not in _NO_SEARCH:
            interactions.append({"code": "search-type"})
        if rtype in CREATE_TYPES:
            interactions.append({"code": "create"})
        if rtype in UPDATE_TYPES:
            interactions.append({"code": "update"})
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": interactions,
            "readHistory": False,
            "conditionalCreate": False,
            "conditionalRead": "not-supported",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchInclude": ["*"],
            "searchRevInclude": ["Provenance:target"],
        }
        if rtype == "Patient":
            entry["operation"] = [
                {"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"},
                {"name": "summary", "definition": "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"},
            ]
        if rtype == "Group":
            entry["operation"] = [
                {
                    "name": "export",
                    "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
                }
            ]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "experimental": True,
        "date": "2026-02-09",
        "publisher": "Epic",
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
                    "extension": [{"url": _OAUTH_URIS, "extension": uris}],
                    "service": [
                        {"coding": [{"system": _SERVICE, "code": "OAuth", "display": "OAuth"}]},
                        {
                            "coding": [
                                {"system": _SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}
                            ]
                        },
                        {"coding": [{"system": _SERVICE, "code": "Basic", "display": "Basic"}]},
                    ],
                },
                "resource": resources,
            }
        ],
    }


_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def smart_configuration(oauth_url: str) -> dict[str, Any]:
    """``[base]/.well-known/smart-configuration`` (docs/epic-notes.md §2.1); always JSON, no authentication.

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
            "client_secret_post",
            "client_secret_basic",
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
        "capabilities": [
            "launch-ehr",
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "context-ehr-patient",
            "context-ehr-encounter",
            "context-standalone-patient",
            "context-banner",
            "context-style",
            "sso-openid-connect",
            "permission-offline",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
        ],
    }
