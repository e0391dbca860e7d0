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

from typing import TYPE_CHECKING as _TYPE_CHECKING

from .._config import EPIC_SANDBOX_BULK_GROUP_ID as EPIC_SANDBOX_BULK_GROUP_ID
from .._lazy import lazy_names as _lazy_names
from ._job import BulkExportJob as BulkExportJob
from ._kickoff import BulkExportStart as BulkExportStart
from ._manifest import BulkFileRef as BulkFileRef
from ._manifest import BulkManifest as BulkManifest
from ._manifest import BulkProgress as BulkProgress
from ._manifest import PollCadence as PollCadence
from ._resources import BulkResourceStream as BulkResourceStream

if _TYPE_CHECKING:
    from ._download import BulkDownloadResult as BulkDownloadResult
    from ._download import BulkTransferStats as BulkTransferStats
    from ._download import DownloadedFile as DownloadedFile

#: The download-to-disk names, imported with ``job.download()`` or on first use: streaming resources does not
#: load them.
_LAZY = {name: "_download" for name in ("BulkDownloadResult", "BulkTransferStats", "DownloadedFile")}
__getattr__, __dir__ = _lazy_names(__name__, _LAZY, globals())


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
