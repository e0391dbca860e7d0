"""Bad input stops a fleet pull with a typed error that says what to fix, before any FHIR request and before
anything is written: a Redis that does not answer, a scheduler that does not answer, no shard, a key that is
not on the workers."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from epic_fhir_async import ConfigurationError, StoreUnavailable
from epic_fhir_async.fleet import (
    ClientSpec,
    ClusterUnavailable,
    KeyFileAuth,
    RedisSettings,
    RedisUnavailable,
    fleet_pull,
)
from epic_fhir_async.fleet._redis_conn import connect

from .._processes import free_port
from .conftest import CLIENT_ID, TYPES, Served


def spec_for(served: Served, key: str | None = None) -> ClientSpec:
    auth = KeyFileAuth(CLIENT_ID, key or str(served.key_path), token_url=served.sandbox.token_url)
    return ClientSpec(served.url, auth=auth)


def assert_untouched(served: Served, out: Path) -> None:
    assert served.sandbox.stats["fhir_requests"] == 0
    assert served.sandbox.stats["token_requests"] == 0
    assert not out.exists()


def test_a_redis_url_that_does_not_answer_is_refused_before_any_request(
    sandbox_factory: Any, tmp_path: Path
) -> None:
    served = sandbox_factory(patients=2)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    # One ``except StoreUnavailable`` covers the fleet's Redis and a web app's.
    with pytest.raises(
        StoreUnavailable, match=r"Redis at redis://127\.0\.0\.1:\d+/0 did not answer"
    ) as caught:
        fleet_pull(spec_for(served), ["a1"], TYPES, tmp_path / "out", workers=1, redis=dead)
    assert isinstance(caught.value, RedisUnavailable)
    assert_untouched(served, tmp_path / "out")


@pytest.mark.anyio
async def test_a_redis_that_accepts_but_never_answers_fails_a_worker_within_its_deadline() -> None:
    with socket.socket() as silent:  # accepts the connection (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        settings = RedisSettings(
            f"redis://:pw-never-shown@127.0.0.1:{silent.getsockname()[1]}/0", timeout=0.3
        )
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await connect(settings)  # what each worker runs before its first shard
        elapsed = time.monotonic() - started
    assert isinstance(caught.value, RedisUnavailable)
    assert elapsed < 2.0  # the deadline, plus one retry at most: never a hang
    assert re.fullmatch(
        r"the fleet's shared state: Redis at redis://127\.0\.0\.1:\d+/0 did not answer \(\w+\); check that it "
        r"runs and is reachable from here",
        str(caught.value),
    )


def test_the_redis_password_is_never_shown(sandbox_factory: Any, tmp_path: Path) -> None:
    served = sandbox_factory(patients=2)
    url = f"redis://user:s3cret-pw@127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailable) as caught:
        fleet_pull(spec_for(served), ["a1"], TYPES, tmp_path / "out", workers=1, redis=url)
    assert "s3cret-pw" not in str(caught.value)
    assert "s3cret-pw" not in repr(RedisSettings(url))


@pytest.mark.timeout(30)
def test_a_scheduler_address_that_does_not_answer_is_refused_before_any_request(
    sandbox_factory: Any, tmp_path: Path
) -> None:
    served = sandbox_factory(patients=2)
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ClusterUnavailable, match=r"no Dask scheduler answered at tcp://127\.0\.0\.1"):
        fleet_pull(spec_for(served), ["a1"], TYPES, tmp_path / "out", scheduler=address, connect_timeout=1.0)
    assert_untouched(served, tmp_path / "out")


@pytest.mark.parametrize("shards", [0, -1, True])
def test_a_shard_count_below_one_is_refused(sandbox_factory: Any, tmp_path: Path, shards: Any) -> None:
    served = sandbox_factory(patients=2)
    with pytest.raises(ConfigurationError, match="shards must be a positive number"):
        fleet_pull(spec_for(served), ["a1"], TYPES, tmp_path / "out", workers=1, shards=shards)
    assert_untouched(served, tmp_path / "out")


def test_a_key_missing_on_the_workers_is_refused_naming_the_worker(
    dask_client: Any, sandbox_factory: Any, redis_db: str, tmp_path: Path
) -> None:
    served = sandbox_factory(patients=2)
    missing = str(tmp_path / "secrets" / "missing.pem")
    with pytest.raises(
        ConfigurationError,
        match=r"worker tcp://127\.0\.0\.1:\d+: the private key .*missing\.pem does not exist on this worker",
    ):
        fleet_pull(
            spec_for(served, missing),
            served.sandbox.dataset.patient_ids,
            TYPES,
            tmp_path / "out",
            dask_client=dask_client,
            redis=redis_db,
        )
    assert_untouched(served, tmp_path / "out")


def test_an_interrupted_job_is_not_overwritten_without_resume(sandbox_factory: Any, tmp_path: Path) -> None:
    served = sandbox_factory(patients=2)
    state = tmp_path / "out" / ".epic-fhir-fleet"
    state.mkdir(parents=True)
    (state / "plan.json").write_text('{"version": 1}')
    with pytest.raises(ConfigurationError, match="holds an interrupted fleet pull: pass resume=True"):
        fleet_pull(spec_for(served), ["a1"], TYPES, tmp_path / "out", workers=1)
    assert served.sandbox.stats["fhir_requests"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency must be a positive int"),
        ({"workers": 0}, "workers must be a positive number"),
        ({"workers": 1, "scheduler": "tcp://127.0.0.1:1"}, "at most one of workers="),
        ({"redis": "http://127.0.0.1:6379"}, "the Redis URL must start with redis://"),
    ],
)
def test_other_bad_arguments_are_refused_before_anything_runs(
    sandbox_factory: Any, tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    served = sandbox_factory(patients=2)
    with pytest.raises(ConfigurationError, match=message):
        fleet_pull(spec_for(served), ["a1"], TYPES, tmp_path / "out", **kwargs)
    assert_untouched(served, tmp_path / "out")


def test_client_spec_refuses_plain_http_off_loopback_and_a_live_auth_object() -> None:
    from epic_fhir_async import StaticTokenAuth

    with pytest.raises(ConfigurationError, match="refusing plain http://"):
        ClientSpec("http://fhir.example.org/api/FHIR/R4")
    with pytest.raises(ConfigurationError, match="takes KeyFileAuth or TokenEnvAuth"):
        ClientSpec("https://fhir.example.org/api/FHIR/R4", auth=StaticTokenAuth("secret"))  # type: ignore[arg-type]
