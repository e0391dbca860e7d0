"""Routing, metadata, SMART configuration, content negotiation, bearer checks and the stats endpoint."""

from __future__ import annotations

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import CAMILA, JSON_ACCEPT

pytestmark = pytest.mark.anyio


async def test_metadata_is_unauthenticated_and_epic_shaped(sb: EpicSandbox) -> None:
    async with httpx.AsyncClient(transport=sb.transport()) as raw:
        response = await raw.get(f"{sb.base_url}/metadata", headers=JSON_ACCEPT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json; charset=utf-8"
    statement = response.json()
    assert statement["software"]["name"] == "Epic"
    assert statement["software"]["version"] == "February 2026"
    assert statement["fhirVersion"] == "4.0.1"
    oauth = statement["rest"][0]["security"]["extension"][0]
    uris = {e["url"]: e["valueUri"] for e in oauth["extension"]}
    assert uris == {"authorize": f"{sb.oauth_url}/authorize", "token": sb.token_url}
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    creates = {t for t, r in by_type.items() if {"code": "create"} in r["interaction"]}
    updates = {t for t, r in by_type.items() if {"code": "update"} in r["interaction"]}
    assert len(creates) == 11
    assert "MedicationRequest" not in creates
    assert len(updates) == 7
    assert "Task" in updates
    searchable = {t for t, r in by_type.items() if {"code": "search-type"} in r["interaction"]}
    assert len(by_type) == 59
    assert len(searchable) == 56
    assert set(by_type) - searchable == {"ConceptMap", "Provenance", "ValueSet"}
    assert all(r["searchInclude"] == ["*"] for t, r in by_type.items() if t in searchable)
    assert all(r["searchRevInclude"] == ["Provenance:target"] for t, r in by_type.items() if t in searchable)
    codes = {i["code"] for r in by_type.values() for i in r["interaction"]}
    assert not codes & {"delete", "patch", "vread", "history-instance", "history-type"}
    ops = {o["name"] for r in by_type.values() for o in r.get("operation", [])}
    assert ops == {"match", "summary", "group-export"}


async def test_metadata_lists_epics_types_and_their_declared_search_params(sb: EpicSandbox) -> None:
    async with httpx.AsyncClient(transport=sb.transport()) as raw:
        statement = (await raw.get(f"{sb.base_url}/metadata", headers=JSON_ACCEPT)).json()
    rest = statement["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert {"Account", "Claim", "ValueSet"} <= set(by_type)
    assert not {"HealthcareService", "InsurancePlan", "MedicationStatement"} & set(by_type)
    assert rest["security"]["cors"] is True
    assert [s["text"] for s in rest["security"]["service"]] == ["OAuth", "SMART-on-FHIR", "Basic"]
    for rtype, entry in by_type.items():
        names = [p["name"] for p in entry.get("searchParam", [])]
        if {"code": "search-type"} in entry["interaction"]:
            assert {"_count", "_id"} <= set(names), rtype
    encounter = {p["name"]: p["type"] for p in by_type["Encounter"]["searchParam"]}
    assert (encounter["class"], encounter["date"], encounter["patient"]) == ("token", "date", "reference")
    assert [i["code"] for i in by_type["Observation"]["interaction"]] == [
        "create",
        "read",
        "search-type",
        "update",
    ]
    assert by_type["Patient"]["supportedProfile"] == [
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|6.1.0"
    ]
    assert by_type["Group"]["operation"] == [
        {
            "name": "group-export",
            "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
        }
    ]


async def test_types_epic_does_not_serve_get_the_iis_404(http: httpx.AsyncClient) -> None:
    for rtype in ("HealthcareService", "InsurancePlan", "MedicationStatement"):
        response = await http.get(rtype, params={"patient": CAMILA})
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
    assert (await http.get("Account", params={"_id": "nope"})).status_code == 200


async def test_metadata_lists_register_only_with_epic_client_id(sb: EpicSandbox) -> None:
    async with httpx.AsyncClient(transport=sb.transport()) as raw:
        response = await raw.get(f"{sb.base_url}/metadata", headers={**JSON_ACCEPT, "Epic-Client-ID": "abc"})
    oauth = response.json()["rest"][0]["security"]["extension"][0]
    assert {e["url"] for e in oauth["extension"]} == {"authorize", "token", "register"}


async def test_smart_configuration_is_always_json(sb: EpicSandbox) -> None:
    async with httpx.AsyncClient(transport=sb.transport()) as raw:
        response = await raw.get(f"{sb.base_url}/.well-known/smart-configuration")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    config = response.json()
    assert config["token_endpoint"] == sb.token_url
    assert config["authorization_endpoint"] == f"{sb.oauth_url}/authorize"
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]


@pytest.mark.parametrize("accept", [None, "*/*", "text/plain", "application/xml"])
async def test_xml_unless_json_is_asked_for(sb: EpicSandbox, accept: str | None) -> None:
    headers = {"Authorization": f"Bearer {sb.issue_token('c')}"}
    if accept is not None:
        headers["Accept"] = accept
    async with httpx.AsyncClient(transport=sb.transport(), headers=headers) as raw:
        response = await raw.get(f"{sb.base_url}/Patient/{CAMILA}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/xml; charset=utf-8"
    assert response.content.startswith(b"<?xml")
    assert b"<Patient" in response.content
    assert CAMILA.encode() in response.content


@pytest.mark.parametrize("accept", ["application/json", "application/fhir+json"])
async def test_json_content_type_is_echoed(sb: EpicSandbox, accept: str) -> None:
    headers = {"Authorization": f"Bearer {sb.issue_token('c')}", "Accept": accept}
    async with httpx.AsyncClient(transport=sb.transport(), headers=headers) as raw:
        response = await raw.get(f"{sb.base_url}/Patient/{CAMILA}")
    assert response.headers["content-type"] == f"{accept}; charset=utf-8"
    assert response.json()["id"] == CAMILA


@pytest.mark.parametrize(
    "path",
    ["/Foo/1", "/$export", "/Patient/$export", f"/Patient/{CAMILA}/$everything", "/", "/Patient/x/y"],
)
async def test_unknown_paths_get_the_iis_html_404(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(http.base_url.join(http.base_url.path + path.lstrip("/")))
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert b"404 - File or directory not found." in response.content


async def test_paths_outside_the_layout_are_html_404(sb: EpicSandbox) -> None:
    async with httpx.AsyncClient(transport=sb.transport()) as raw:
        response = await raw.get(f"{sb.origin}/api/FHIR/R4/metadata")
        oauth = await raw.get(f"{sb.oauth_url}/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert oauth.status_code == 404
    assert oauth.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic abc", "Bearer "])
async def test_bad_tokens_get_401_with_epics_json_empty_string_body(
    sb: EpicSandbox, authorization: str | None
) -> None:
    headers = dict(JSON_ACCEPT)
    if authorization is not None:
        headers["Authorization"] = authorization
    async with httpx.AsyncClient(transport=sb.transport(), headers=headers) as raw:
        response = await raw.get(f"{sb.base_url}/Patient/{CAMILA}")
    assert response.status_code == 401
    assert response.content == b'""'  # two bytes, no OperationOutcome (docs/epic-notes.md §3.7)
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="The access token provided is not valid"'
    )


async def test_expired_token_gets_401(sb: EpicSandbox) -> None:
    headers = {"Authorization": f"Bearer {sb.issue_token('c', lifetime=60)}", **JSON_ACCEPT}
    async with httpx.AsyncClient(transport=sb.transport(), headers=headers) as raw:
        assert (await raw.get(f"{sb.base_url}/Patient/{CAMILA}")).status_code == 200
        sb.clock.advance(61)
        assert (await raw.get(f"{sb.base_url}/Patient/{CAMILA}")).status_code == 401


async def test_type_outside_the_client_list_gets_403(sb: EpicSandbox) -> None:
    from joserfc.jwk import ECKey

    jwks = {"keys": [{**ECKey.generate_key("P-256").as_dict(private=False), "kid": "k"}]}
    sb.register_client("patients-only", jwks, resource_types=["Patient"])
    headers = {"Authorization": f"Bearer {sb.issue_token('patients-only')}", **JSON_ACCEPT}
    async with httpx.AsyncClient(transport=sb.transport(), headers=headers) as raw:
        allowed = await raw.get(f"{sb.base_url}/Patient/{CAMILA}")
        denied = await raw.get(f"{sb.base_url}/Condition", params={"patient": CAMILA})
    assert allowed.status_code == 200
    assert denied.status_code == 403
    assert denied.content == b""
    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]


async def test_stats_count_requests_and_statuses(sb: EpicSandbox, http: httpx.AsyncClient) -> None:
    await http.get(f"Patient/{CAMILA}")
    await http.get("Patient/unknown-id")
    async with httpx.AsyncClient(transport=sb.transport()) as raw:
        stats = (await raw.get(f"{sb.origin}/__sandbox/stats")).json()
    assert stats["fhir_requests"] == 2
    assert stats["status:200"] == 1
    assert stats["status:404"] == 1
    assert sb.stats["fhir_requests"] == 2
