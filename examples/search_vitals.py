"""Stream a patient's vital signs across Epic's paged Bundles, with the real total and Epic's warnings.

Runs against the embedded Epic sandbox (in-process, no network): Derrick Lin has more than 1000 vital signs,
so Epic's 1000-entry pages split and the search follows ``sessionID`` next links.
"""

from __future__ import annotations

from collections import Counter

import anyio

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth
from epic_fhir_async.sandbox import EpicSandbox

PATIENT_ID = "eq081-VQEgP8drUUqCWzHfw3"  # Derrick Lin


async def main() -> None:
    sandbox = EpicSandbox(seed=0)
    auth = StaticTokenAuth(sandbox.issue_token("search-vitals-example"))
    async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=sandbox.transport()) as client:
        query = client.search("Observation", patient=PATIENT_ID, category="vital-signs")
        print("matches (_summary=count):", await query.count())
        codes: Counter[str] = Counter()
        pages = 0
        async for page in query.pages():
            pages += 1
            for observation in page.resources:
                codes[observation["code"].get("text", "?")] += 1
            for outcome in page.outcomes:  # Epic's warnings: never mixed into the data
                print("warning:", outcome)
        print(f"{sum(codes.values())} observations on {pages} pages")
        for text, n in codes.most_common(5):
            print(f"  {n:5d}  {text}")


if __name__ == "__main__":
    anyio.run(main)
