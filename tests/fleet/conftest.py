"""Real components for the fleet's tests: Dask ``LocalCluster``s of worker processes and the embedded sandbox
served by uvicorn on 127.0.0.1 in a thread, recording when each request arrived. Every process started here is
stopped here. The ``redis-server`` (``redis_db``) is tests/conftest.py's.

The Redis client (``redis.asyncio``) runs on asyncio only, so the async tests here run on asyncio only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from epic_fhir_async import EpicFHIRClient, StaticTokenAuth
from epic_fhir_async.auth import generate_private_key, private_key_pem, public_jwks
from epic_fhir_async.fleet._driver import local_cluster_options
from epic_fhir_async.pull._queries import expand_queries
from epic_fhir_async.sandbox import EpicSandbox
from epic_fhir_async.sandbox._http import Request, Response

pytest.importorskip("distributed", reason="the fleet extra (dask[distributed]) is not installed")
pytest.importorskip("redis", reason="the fleet extra (redis) is not installed")

TYPES = ["Patient", "Condition", "Observation", "MedicationRequest", "Encounter"]
CLIENT_ID = "fleet-test-client"
FHIR_PATH = "/api/FHIR/R4"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio is asyncio-only


# -- Dask -------------------------------------------------------------------------------------------------------


def local_cluster(workers: int = 2) -> tuple[Any, Any]:
    """A LocalCluster of worker processes (one thread each, no dashboard, on 127.0.0.1) and a client of it."""
    distributed: Any = importlib.import_module("distributed")  # typed loosely: much of it is unannotated
    cluster = distributed.LocalCluster(**local_cluster_options(workers))
    return cluster, distributed.Client(cluster, set_as_default=False)


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    cluster, client = local_cluster(2)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


# -- the sandbox, served --------------------------------------------------------------------------------------


class RecordingSandbox(EpicSandbox):
    """The sandbox, noting every request as (monotonic time, kind, status); optionally answering the
    ``inject_429_at``-th FHIR request with 429 and ``Retry-After: inject_retry_after``."""

    def __init__(self, *args: Any, inject_429_at: int | None = None, inject_retry_after: int = 2, **kw: Any):
        super().__init__(*args, **kw)
        self.log: list[tuple[float, str, int]] = []
        self.inject_429_at = inject_429_at
        self.inject_retry_after = inject_retry_after
        self._fhir_seen = 0

    async def handle(self, request: Request) -> Response:
        now = time.monotonic()
        kind = (
            "fhir" if FHIR_PATH in request.path else "token" if request.path.endswith("/token") else "other"
        )
        if kind == "fhir":
            self._fhir_seen += 1
            if self._fhir_seen == self.inject_429_at:
                self.log.append((now, kind, 429))
                headers = [("content-type", "text/plain"), ("retry-after", str(self.inject_retry_after))]
                return Response(429, headers, b"Too Many Requests")
        response = await super().handle(request)
        self.log.append((now, kind, response.status))
        return response

    def times(self, kind: str, status: int | None = None) -> list[float]:
        return [t for t, k, s in self.log if k == kind and (status is None or s == status)]

    def reset_records(self) -> None:
        self.log.clear()
        self.stats.clear()
        self._fhir_seen = 0


@dataclass
class Served:
    sandbox: RecordingSandbox
    url: str = ""
    key_path: Path = field(default_factory=Path)
    _stop: Any = None
    _loop: Any = None
    _thread: threading.Thread | None = None

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=15)


def serve_in_thread(sandbox: RecordingSandbox) -> Served:
    """Serve ``sandbox`` under uvicorn on 127.0.0.1 in a thread of its own (its own asyncio loop)."""
    served = Served(sandbox)
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        async def main() -> None:
            async with sandbox.serve(host="127.0.0.1", port=0) as url:
                served.url = url
                served._stop = anyio.Event()
                served._loop = asyncio.get_running_loop()
                ready.set()
                await served._stop.wait()

        try:
            anyio.run(main)
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
            ready.set()

    served._thread = threading.Thread(target=run, name="sandbox-server", daemon=True)
    served._thread.start()
    if not ready.wait(15) or failure:
        raise RuntimeError(f"the sandbox server did not start: {failure!r}")
    return served


@pytest.fixture
def sandbox_factory(tmp_path: Path) -> Iterator[Any]:
    """``make(**config)``: a RecordingSandbox served on 127.0.0.1, with CLIENT_ID registered for a key file."""
    started: list[Served] = []

    def make(**config: Any) -> Served:
        config.setdefault("patients", 40)
        config.setdefault("seed", 3)
        sandbox = RecordingSandbox(**config)
        key = generate_private_key("ES384")
        key_path = tmp_path / f"key-{len(started)}.pem"
        key_path.write_bytes(private_key_pem(key))
        os.chmod(key_path, 0o600)
        sandbox.register_client(CLIENT_ID, public_jwks(key))
        served = serve_in_thread(sandbox)
        served.key_path = key_path
        started.append(served)
        return served

    yield make
    for served in started:
        served.stop()


# -- the truth: plain searches ---------------------------------------------------------------------------------


def truth(sandbox: EpicSandbox, patients: list[str], types: list[str] = TYPES) -> dict[str, set[str]]:
    """Every resource id per type that plain searches return for ``patients`` (in-process, no fleet)."""

    async def main() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        auth = StaticTokenAuth(sandbox.issue_token("truth-client", lifetime=3600))
        async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=sandbox.transport()) as client:
            for pid in patients:
                for query in expand_queries(types):
                    async for resource in client.search(query.resource_type, **query.params_for(pid)):
                        found.setdefault(resource["resourceType"], set()).add(resource["id"])
        return found

    faults = dataclasses.replace(sandbox.faults)
    sandbox.faults.latency = 0.0  # the truth is the data, fetched as fast as possible
    sandbox.faults.rate_limit_rps = 0.0
    try:
        return anyio.run(main)
    finally:
        sandbox.faults.latency = faults.latency
        sandbox.faults.rate_limit_rps = faults.rate_limit_rps


def written(out: Path) -> dict[str, list[str]]:
    """Resource ids per type in the merged NDJSON files, repeats kept."""
    import orjson

    ids: dict[str, list[str]] = {}
    for path in sorted(out.glob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            resource = orjson.loads(line)
            ids.setdefault(resource["resourceType"], []).append(resource["id"])
    return ids


def assert_exact(out: Path, expected: dict[str, set[str]]) -> None:
    got = written(out)
    duplicated = {t: len(v) - len(set(v)) for t, v in got.items() if len(v) != len(set(v))}
    assert duplicated == {}, "duplicated resources"
    assert {t: set(v) for t, v in got.items()} == expected, "lost (or unexpected) resources"
