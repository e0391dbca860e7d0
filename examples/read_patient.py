"""Read one patient: the README's one-liner.

With ``EPIC_FHIR_ACCESS_TOKEN`` set (a bearer token from Epic's sandbox), it reads Camila Lopez from
fhir.epic.com (``EPIC_FHIR_BASE_URL`` overrides the base). Without it, it runs against the embedded Epic
sandbox, so the example always works offline.
"""

from __future__ import annotations

import os

import anyio

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth

EPIC_SANDBOX_BASE_URL = "https://fhir.epic.com/interconnect-fhir-oauth/api/FHIR/R4"  # Epic's public sandbox
PATIENT_ID = "erXuFYUfucBZaryVksYEcMg3"  # Camila Lopez, one of Epic's sandbox patients


async def main() -> None:
    token = os.environ.get("EPIC_FHIR_ACCESS_TOKEN")
    if token:
        base_url = os.environ.get("EPIC_FHIR_BASE_URL", EPIC_SANDBOX_BASE_URL)
        async with EpicFHIRClient(base_url, auth=StaticTokenAuth(token)) as client:
            patient = await client.read("Patient", PATIENT_ID)
    else:
        from epic_fhir_async.sandbox import EpicSandbox

        sandbox = EpicSandbox(seed=0)
        auth = StaticTokenAuth(sandbox.issue_token("read-patient-example"))
        async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=sandbox.transport()) as client:
            patient = await client.read("Patient", PATIENT_ID)
    print(patient["name"][0]["text"], patient.get("birthDate"), patient.get("gender"))


if __name__ == "__main__":
    anyio.run(main)
