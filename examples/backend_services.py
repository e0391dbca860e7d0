"""Read a patient with SMART Backend Services auth (a signed JWT traded for an access token).

With ``EPIC_FHIR_BASE_URL``, ``EPIC_FHIR_CLIENT_ID`` and ``EPIC_FHIR_PRIVATE_KEY`` (a PEM file) set, it talks
to that Epic server. Otherwise it generates a key pair, registers the public half with the embedded Epic
sandbox (what you do once at fhir.epic.com) and runs offline.
"""

from __future__ import annotations

import os

import anyio

from epic_fhir_async import BackendServicesAuth, EpicFHIRClient
from epic_fhir_async.auth import generate_private_key, public_jwks

PATIENT_ID = "erXuFYUfucBZaryVksYEcMg3"  # Camila Lopez, one of Epic's sandbox patients


async def read_patient(client: EpicFHIRClient, auth: BackendServicesAuth) -> None:
    patient = await client.read("Patient", PATIENT_ID)
    names = patient.get("name") or [{}]
    print(f"Patient/{PATIENT_ID}: {names[0].get('text', '(no name)')}")
    token = await auth.get_token()  # the token the read used: cached, not fetched again
    print(f"token URL: {auth.token_url}")
    print(f"signing key: kid={auth.signing_key.kid} alg={auth.signing_key.algorithm}")
    print(f"token lifetime: {token.lifetime or 0:.0f} s, scopes: {len(token.scopes)}")


async def main() -> None:
    base_url = os.environ.get("EPIC_FHIR_BASE_URL")
    client_id = os.environ.get("EPIC_FHIR_CLIENT_ID")
    key_path = os.environ.get("EPIC_FHIR_PRIVATE_KEY")
    if base_url and client_id and key_path:
        auth = BackendServicesAuth(client_id, key_path)
        async with EpicFHIRClient(base_url, auth=auth) as client:
            await read_patient(client, auth)
        return

    from epic_fhir_async.sandbox import EpicSandbox

    sandbox = EpicSandbox(seed=0)
    key = generate_private_key("RS384")  # `epic-fhir keys generate` writes the same to files
    sandbox.register_client("example-backend-app", public_jwks(key))
    auth = BackendServicesAuth("example-backend-app", key)
    async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=sandbox.transport()) as client:
        await read_patient(client, auth)


if __name__ == "__main__":
    anyio.run(main)
