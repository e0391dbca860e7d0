"""Bulk Data ``$export``: kick-off, status polling, the manifest, and the files (streamed or to disk).

::

    async with client.bulk_export(group_id=GROUP, types=["Patient", "Observation"]) as job:
        save(job.status_url)                     # persist at once: Epic jobs run for hours
        manifest = await job.wait()
        async with job.resources() as stream:    # several files at once, memory flat
            async for resource in stream:
                ...
        await job.download("out/")               # or files on disk, resumable
        await job.delete()                       # frees Epic's one-export-per-client-and-Group slot
"""

from __future__ import annotations

from .._config import EPIC_SANDBOX_BULK_GROUP_ID as EPIC_SANDBOX_BULK_GROUP_ID
from ._download import BulkDownloadResult as BulkDownloadResult
from ._download import BulkTransferStats as BulkTransferStats
from ._download import DownloadedFile as DownloadedFile
from ._job import BulkExportJob as BulkExportJob
from ._kickoff import BulkExportStart as BulkExportStart
from ._manifest import BulkFileRef as BulkFileRef
from ._manifest import BulkManifest as BulkManifest
from ._manifest import BulkProgress as BulkProgress
from ._manifest import PollCadence as PollCadence
from ._resources import BulkResourceStream as BulkResourceStream

__all__ = [
    "EPIC_SANDBOX_BULK_GROUP_ID",
    "BulkDownloadResult",
    "BulkExportJob",
    "BulkExportStart",
    "BulkFileRef",
    "BulkManifest",
    "BulkProgress",
    "BulkResourceStream",
    "BulkTransferStats",
    "DownloadedFile",
    "PollCadence",
]
