"""Concurrent pulls: many resource types for many patients, as one bounded stream.

``client.pull(patients, types)`` returns a :class:`PullStream`; everything a pull hands out or reports is
here (items, failures, per-stream outcomes, progress, checkpoints, Epic's query expansion rules), and
:class:`NDJSONSink`, the checkpoint that writes a pull crash-safely to one NDJSON file per resource type.
"""

from __future__ import annotations

from ._checkpoint import PullCheckpoint as PullCheckpoint
from ._checkpoint import StreamCheckpoint as StreamCheckpoint
from ._queries import EpicExpansion as EpicExpansion
from ._queries import check_patient_id as check_patient_id
from ._queries import check_resource_type as check_resource_type
from ._sink import NDJSONSink as NDJSONSink
from ._stream import PullStream as PullStream
from ._values import PullFailure as PullFailure
from ._values import PullItem as PullItem
from ._values import PullProgress as PullProgress
from ._values import StreamOutcomes as StreamOutcomes

__all__ = [
    "EpicExpansion",
    "NDJSONSink",
    "PullCheckpoint",
    "PullFailure",
    "PullItem",
    "PullProgress",
    "PullStream",
    "StreamCheckpoint",
    "StreamOutcomes",
    "check_patient_id",
    "check_resource_type",
]
