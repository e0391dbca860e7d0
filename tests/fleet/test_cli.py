"""``epic-fhir pull ... --workers N --redis URL``: the same pull on local Dask workers, one display for the
job; bad fleet options are usage errors before any request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from epic_fhir_async.cli._main import main

from .._processes import free_port
from .conftest import CLIENT_ID, TYPES, Served, assert_exact, truth


def args(served: Served, out: Path, *extra: str) -> list[str]:
    sb = served.sandbox
    return [
        "pull",
        "--base-url",
        served.url,
        "--client-id",
        CLIENT_ID,
        "--key",
        str(served.key_path),
        "--token-url",
        sb.token_url,
        "--patients",
        *sb.dataset.patient_ids,
        "--types",
        *TYPES,
        "--out",
        str(out),
        *extra,
    ]


def status_of(argv: list[str]) -> object:
    """The exit status, whether argparse exits (bad option values) or the command returns it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.slow
def test_pull_with_workers_and_redis_writes_the_pull_layout_and_one_progress_line(
    sandbox_factory: Any, redis_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served = sandbox_factory(patients=6)
    sb = served.sandbox
    expected = truth(sb, list(sb.dataset.patient_ids))
    sb.reset_records()

    status = main(args(served, tmp_path / "out", "--workers", "2", "--shards", "3", "--redis", redis_db))

    out, err = capsys.readouterr()
    assert status == 0, err
    assert_exact(tmp_path / "out", expected)
    assert f"Pulled into {tmp_path / 'out'}" in out
    assert "in 3 shards on 2 worker(s)" in out
    assert "token requests 1" in out
    assert sb.stats["token_requests"] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "0"], "argument --workers: '0' is not a positive integer"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not allowed with argument"),
        (["--workers", "1", "--requests-per-second", "5"], "give --redis URL as well"),
        (["--workers", "1", "--redis", "localhost:6379"], "the Redis URL must start with redis://"),
    ],
)
def test_bad_fleet_options_are_usage_errors_before_any_request(
    sandbox_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    served = sandbox_factory(patients=2)
    assert status_of(args(served, tmp_path / "out", *extra)) == 2
    assert message in capsys.readouterr().err
    assert served.sandbox.stats["token_requests"] == 0
    assert not (tmp_path / "out").exists()


def test_a_redis_that_does_not_answer_is_a_usage_error(
    sandbox_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served = sandbox_factory(patients=2)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    status = main(args(served, tmp_path / "out", "--workers", "1", "--redis", dead))
    assert status == 2
    assert "did not answer" in capsys.readouterr().err
    assert served.sandbox.stats["token_requests"] == 0
