"""A Group-level Bulk Data $export: kick off, poll, stream the resources, download the files, delete the job.

Runs against the embedded Epic sandbox (in-process, no network; the export "takes" 30 seconds of sandbox
time, fast-forwarded). Against a real Epic server, build the client with ``BackendServicesAuth`` (see
``backend_services.py``), use the Group id your Epic customer gives you, and keep the default poll cadence.
"""

from __future__ import annotations

import tempfile
from collections import Counter

import anyio

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth
from epic_fhir_async.bulk import BulkProgress, PollCadence
from epic_fhir_async.sandbox import EpicSandbox, SandboxClock


async def main() -> None:
    sandbox = EpicSandbox(seed=0, patients=20, clock=SandboxClock(frozen_at=1_750_000_000.0))
    sandbox.bulk.export_seconds = 30.0
    token = sandbox.issue_token(client_id="bulk-example")
    quick = PollCadence(initial=0.01, maximum=0.05, max_retry_after=0.05, min_delay=0.0)  # sandbox only

    def progress(event: BulkProgress) -> None:
        print(f"poll {event.polls}: {event.text or 'running'}")
        sandbox.clock.advance(10.0)  # the sandbox's export advances 10 s per poll

    async with EpicFHIRClient(
        sandbox.base_url, auth=StaticTokenAuth(token), transport=sandbox.transport()
    ) as client:
        group = sandbox.dataset.group_id
        # Leaving this block with an exception would cancel the export on the server (DELETE).
        async with client.bulk_export(
            group, types=["Patient", "Condition", "Observation"], cadence=quick
        ) as job:
            print(f"status URL (save it to resume after a crash): {job.status_url}")
            manifest = await job.wait(progress=progress)
            print(f"manifest: {len(manifest.outputs)} files, expected {manifest.expected_counts()}")

            counts: Counter[str] = Counter()
            async with job.resources(types=["Observation"]) as stream:  # 4 files at once by default
                async for resource in stream:
                    for category in resource.get("category", []):
                        for coding in category.get("coding", []):
                            if coding.get("system", "").endswith("observation-category"):
                                counts[coding["code"]] += 1
            print(f"Observations by category: {dict(counts)}")

            with tempfile.TemporaryDirectory() as directory:
                result = await job.download(directory)
                print(f"downloaded {result.resources} resources in {len(result.files)} files to {directory}")
                for outcome in result.outcomes:
                    print(f"error file says: {outcome}")
                rerun = await job.download(directory)  # a rerun skips files already complete
                print(f"rerun skipped {sum(f.skipped for f in rerun.files)} complete files")
            await job.delete()  # Epic allows one export per client and Group at a time


if __name__ == "__main__":
    anyio.run(main)
