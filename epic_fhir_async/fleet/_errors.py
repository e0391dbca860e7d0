"""The fleet's errors, under the SDK's tree (``EpicFHIRError``)::

EpicFHIRError
└── FleetError              a fleet job failed; ``error_type`` names the worker's error, ``shard`` where
    ├── FleetUnavailable    something the job needs does not answer (raised before any FHIR request)
    │   ├── ClusterUnavailable  the Dask scheduler (or it has no worker)
    │   └── RedisUnavailable    the Redis server (also a StoreUnavailable, as the web app's Redis errors)
    └── FleetStreamError    stands for one failed (patient, query) stream in ``FleetResult.failures``
"""

from __future__ import annotations

from .._errors import EpicFHIRError, StoreUnavailable

__all__ = ["ClusterUnavailable", "FleetError", "FleetStreamError", "FleetUnavailable", "RedisUnavailable"]


class FleetError(EpicFHIRError):
    """A fleet job failed. ``error_type`` is the name of the error raised on the worker (when it could not
    cross processes as itself), ``shard`` the shard it came from (``None``: the job's set-up)."""

    def __init__(self, message: str, *, error_type: str | None = None, shard: int | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.shard = shard


class FleetUnavailable(FleetError):
    """A service the job needs did not answer in time; nothing was requested from the FHIR server."""


class ClusterUnavailable(FleetUnavailable):
    """The Dask scheduler did not answer at the given address, or has no worker."""


class RedisUnavailable(FleetUnavailable, StoreUnavailable):
    """The Redis server did not answer (from the driver or from a worker).

    Also a :class:`~epic_fhir_async.StoreUnavailable`, the error of every Redis the SDK keeps state in, so
    one ``except StoreUnavailable`` covers the fleet's and a web app's.
    """


class FleetStreamError(FleetError):
    """One (patient, query) stream failed on a worker: ``PullFailure.error`` in ``FleetResult.failures``.

    ``str()`` is the worker's error text (which never holds a token or an OperationOutcome's diagnostics);
    ``error_type`` its class name (``NotFound``, ``ServerError``, ...).
    """
