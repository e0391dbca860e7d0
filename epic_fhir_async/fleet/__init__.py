"""Scale-out: one pull across many cores and machines, on Dask, with the token and the rate budget in Redis.

    from epic_fhir_async.fleet import ClientSpec, KeyFileAuth, fleet_pull

    spec = ClientSpec(base_url, auth=KeyFileAuth("my-client-id", "/secrets/epic.pem"))
    result = fleet_pull(spec, patient_ids, ["Condition", "Observation"], "/shared/extract",
                        workers=8, redis="redis://localhost:6379/0")

The same patients x types pull as ``client.pull``, split into patient shards that run on Dask workers (one
asyncio loop and one client per worker process), written as ``epic-fhir pull`` writes it (one
``<Type>.ndjson`` per resource type), each shard resumable from its own checkpoint. With Redis, the workers
share one token per expiry and one rate budget (requests per second and the 429 pause). See docs/fleet.md.

The ``fleet`` extra (``pip install 'epic-fhir-async[fleet]'``: ``dask[distributed]``, ``redis``); nothing
here is imported by ``import epic_fhir_async``. The workers run asyncio (``redis.asyncio`` requires it),
whatever the caller's event loop is.
"""

from __future__ import annotations

from ._budget import FleetTransport as FleetTransport
from ._budget import SharedBudget as SharedBudget
from ._driver import FleetProgress as FleetProgress
from ._driver import FleetResult as FleetResult
from ._driver import fleet_pull as fleet_pull
from ._errors import ClusterUnavailable as ClusterUnavailable
from ._errors import FleetError as FleetError
from ._errors import FleetStreamError as FleetStreamError
from ._errors import FleetUnavailable as FleetUnavailable
from ._errors import RedisUnavailable as RedisUnavailable
from ._redis_conn import RedisSettings as RedisSettings
from ._spec import ClientSpec as ClientSpec
from ._spec import KeyFileAuth as KeyFileAuth
from ._spec import TokenEnvAuth as TokenEnvAuth
from ._tokens import RedisTokenCache as RedisTokenCache

__all__ = [
    "ClientSpec",
    "ClusterUnavailable",
    "FleetError",
    "FleetProgress",
    "FleetResult",
    "FleetStreamError",
    "FleetTransport",
    "FleetUnavailable",
    "KeyFileAuth",
    "RedisSettings",
    "RedisTokenCache",
    "RedisUnavailable",
    "SharedBudget",
    "TokenEnvAuth",
    "fleet_pull",
]
