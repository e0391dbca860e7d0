"""Pull several resource types for many patients at once, resumably, with Epic's search rules applied.

Runs against the embedded Epic sandbox (in-process, no network). Against a real Epic server, build the
client with ``BackendServicesAuth`` (see ``backend_services.py``) and pass your own patient ids.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth
from epic_fhir_async.pull import PullCheckpoint, PullProgress
from epic_fhir_async.sandbox import EpicSandbox

TYPES = [
    "Patient",  # read through _id (Epic's Patient search needs demographics or _id)
    "Condition",  # + patient=<id>
    "Observation",  # one search per category Epic requires: vital-signs, laboratory, social-history
    "MedicationRequest?status=active",  # templates keep their own filters
]


def show(progress: PullProgress) -> None:
    if progress.event == "finished":
        print(
            f"{progress.streams_done} streams, {progress.pages} pages, {progress.resources} resources "
            f"in {progress.elapsed:.2f} s"
        )


async def main() -> None:
    sandbox = EpicSandbox(seed=0, patients=30)
    patient_ids = list(sandbox.dataset.patient_ids)
    token = sandbox.issue_token("example-pull")  # the sandbox's shortcut; use BackendServicesAuth for Epic
    checkpoint = await PullCheckpoint.load(Path("pull-checkpoint.json"))
    if len(checkpoint):
        # A re-run fetches only the streams a crash (or a failure) left unfinished.
        print(
            f"resuming: {len(checkpoint)} streams already complete (delete pull-checkpoint.json to pull again)"
        )
    per_type: Counter[str] = Counter()
    async with EpicFHIRClient(
        sandbox.base_url, auth=StaticTokenAuth(token), transport=sandbox.transport()
    ) as client:
        try:
            async with client.pull(
                patient_ids, TYPES, concurrency=8, on_error="collect", checkpoint=checkpoint, progress=show
            ) as stream:
                async for item in stream:  # PullItem(patient_id, query, resource)
                    per_type[item.resource_type] += 1
        finally:
            await checkpoint.save()  # a re-run skips every completed (patient, query) stream
    for rtype, n in sorted(per_type.items()):
        print(f"{rtype:20} {n:6}")
    print(f"failed streams: {len(stream.failures)}; streams with Epic warnings: {len(stream.outcomes)}")
    print(f"checkpoint: {len(checkpoint)} completed streams in pull-checkpoint.json")


if __name__ == "__main__":
    anyio.run(main)
