"""The endpoint directory and brands bundle and Epic-Client-ID handling, raw HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import CAMILA, JSON_ACCEPT

pytestmark = pytest.mark.anyio
EXTRA = ("Example Health (production style)", "https://fhir.example-health.test/FHIRProxy/api/FHIR/R4/")
MIME_TYPES = [
    "application/fhir+json",
    "application/json+fhir",
    "application/xml+fhir",
    "application/fhir+xml",
]


def oauth_uris(statement: dict[str, Any]) -> dict[str, str]:
    extension = statement["rest"][0]["security"]["extension"][0]["extension"]
    return {e["url"]: e["valueUri"] for e in extension}


async def test_endpoint_directory_lists_the_sandbox_and_extras() -> None:
    sb = EpicSandbox(seed=0, patients=0, directory=(EXTRA,))
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        response = await http.get(f"{sb.origin}/Endpoints/R4")
        again = await http.get(f"{sb.origin}/Endpoints/R4")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert again.content == response.content
    bundle = response.json()
    assert (bundle["resourceType"], bundle["type"], bundle["total"]) == ("Bundle", "collection", 2)
    addresses = [e["resource"]["address"] for e in bundle["entry"]]
    assert addresses == [f"{sb.base_url}/", EXTRA[1]]
    for entry in bundle["entry"]:
        endpoint = entry["resource"]
        assert endpoint["resourceType"] == "Endpoint"
        assert endpoint["address"].endswith("/api/FHIR/R4/")
        assert endpoint["connectionType"]["code"] == "hl7-fhir-rest"
        assert endpoint["payloadMimeType"] == MIME_TYPES
        (organization,) = endpoint["contained"]
        assert organization["resourceType"] == "Organization"
        assert endpoint["managingOrganization"] == {"reference": f"#{organization['id']}"}
    assert bundle["entry"][1]["resource"]["name"] == EXTRA[0]


async def test_brands_bundle_pairs_organizations_with_endpoints() -> None:
    sb = EpicSandbox(seed=0, patients=0, directory=(EXTRA,))
    async with httpx.AsyncClient(transport=sb.transport()) as http:
        bundle = (await http.get(f"{sb.origin}/Endpoints/Brands")).json()
    assert bundle["type"] == "collection"
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in bundle["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    assert len(by_type["Organization"]) == len(by_type["Endpoint"]) == 2
    endpoints = {e["id"]: e for e in by_type["Endpoint"]}
    for organization in by_type["Organization"]:
        (ref,) = organization["endpoint"]
        endpoint = endpoints[ref["reference"].removeprefix("Endpoint/")]
        management = endpoint["managingOrganization"]["identifier"]
        assert management["system"] == "https://fhir.epic.com/Developer/Management/OrganizationId"
        assert management in organization["identifier"]
    assert {e["address"] for e in endpoints.values()} == {f"{sb.base_url}/", EXTRA[1]}


def test_directory_entries_are_checked() -> None:
    with pytest.raises(ValueError, match="pairs"):
        EpicSandbox(seed=0, patients=0, directory=(("only a name",),))


async def test_metadata_per_epic_client_id(sb: EpicSandbox) -> None:
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                      "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "kid": "k"}]}  # fmt: skip
    sb.register_client("no-dynamic", jwks, dynamic_registration=False)
    override = "https://override.example.test/oauth2"
    sb.register_client(
        "overridden", jwks, oauth_uris={"authorize": f"{override}/authorize", "token": f"{override}/token"}
    )
    async with httpx.AsyncClient(transport=sb.transport()) as raw:

        async def statement(client_id: str | None, accept: str = "application/fhir+json") -> dict[str, str]:
            headers = {"Accept": accept, **({"Epic-Client-ID": client_id} if client_id else {})}
            return oauth_uris((await raw.get(f"{sb.base_url}/metadata", headers=headers)).json())

        plain = await statement(None)
        assert set(plain) == {"authorize", "token"}
        assert set(await statement("any-client")) == {"authorize", "token", "register"}
        assert set(await statement("no-dynamic")) == {"authorize", "token"}
        overridden = await statement("overridden")
        assert overridden == {
            "authorize": f"{override}/authorize",
            "token": f"{override}/token",
            "register": f"{sb.oauth_url}/register",
        }
        assert await statement(None) == plain  # cached variants never leak into each other
        xml = await raw.get(f"{sb.base_url}/metadata", headers={"Epic-Client-ID": "overridden"})
    assert xml.headers["content-type"].startswith("application/xml")
    assert override.encode() in xml.content
    with pytest.raises(ValueError, match="oauth_uris"):
        sb.register_client("bad", jwks, oauth_uris={"issuer": "x"})


async def test_epic_client_id_is_accepted_everywhere(sb: EpicSandbox) -> None:
    headers = {
        "Epic-Client-ID": "all-types",
        "Authorization": f"Bearer {sb.issue_token('all-types')}",
        **JSON_ACCEPT,
    }
    group = sb.dataset.group_id
    async with httpx.AsyncClient(transport=sb.transport(), base_url=sb.base_url, headers=headers) as http:
        assert (await http.get(f"Patient/{CAMILA}")).status_code == 200
        assert (await http.get("Condition", params={"patient": CAMILA})).status_code == 200
        assert (await http.get(".well-known/smart-configuration")).status_code == 200
        kick = await http.get(
            f"Group/{group}/$export", params={"_type": "Patient"}, headers={"Prefer": "respond-async"}
        )
        assert kick.status_code == 202
        assert (await http.get(kick.headers["content-location"])).status_code in (200, 202)
        token = await http.post(sb.token_url, data={"grant_type": "client_credentials"})
    assert token.json()["error"] == "invalid_client"  # the header changes nothing about authentication
