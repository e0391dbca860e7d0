"""``epic-fhir sandbox`` flags reach the sandbox (its config, its clients); the server itself is exercised by
test_sandbox_done_when.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from joserfc.jwk import RSAKey

from epic_fhir_async.cli import _sandbox


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _sandbox.register(parser.add_subparsers())
    return parser.parse_args(["sandbox", *argv])


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    key = RSAKey.generate_key(2048, parameters={"kid": "k"})
    path.write_text(json.dumps({"keys": [key.as_dict(private=False)]}), encoding="utf-8")
    return path


def test_flags_become_config(jwks_file: Path) -> None:
    args = _parse(
        "--client", f"narrow={jwks_file}", "--client-types", "narrow=Patient,Observation?category=laboratory",
        "--client", "remote=https://keys.example.test/jwks.json", "--scope-style", "v2",
        "--environment", "production", "--root-path", "/FHIRProxy", "--token-audience", "https://proxy.test/t",
        "--page-size", "50", "--session-ttl", "30", "--unknown-params", "warn",
        "--directory", "Other=https://other.test/api/FHIR/R4/", "--retry-after", "5", "--retry-after-http-date",
        "--export-cooldown", "86400", "--export-resources-per-file", "3000", "--export-retention", "60",
        "--export-since", "ignore", "--no-export-type-filter", "--export-allow-post",
        "--export-synthetic-observations", "10", "--port", "0",
    )  # fmt: skip
    sb = _sandbox.build_sandbox(args)
    config = sb.config
    assert (config.environment, config.root_path, config.token_audiences) == (
        "production",
        "/FHIRProxy",
        ("https://proxy.test/t",),
    )
    assert (config.page_size, config.session_ttl, config.unknown_params) == (50, 30.0, "warn")
    assert config.directory == (("Other", "https://other.test/api/FHIR/R4/"),)
    assert (sb.faults.retry_after, sb.faults.retry_after_http_date) == (5.0, True)
    bulk = sb.bulk
    assert (bulk.cooldown_seconds, bulk.resources_per_file, bulk.retention_seconds) == (86400.0, 3000, 60.0)
    assert (bulk.since, bulk.type_filter, bulk.allow_post, bulk.synthetic_observations) == (
        "ignore",
        False,
        True,
        10,
    )
    assert sb.oauth.allowed_types("narrow") == frozenset({"Patient", "Observation?category=laboratory"})
    assert sb.oauth.allowed_types("remote") is None
    assert sb.oauth.jku.url_for("remote") == "https://keys.example.test/jwks.json"
    assert sb.oauth.jku.url_for("narrow") is None


def test_defaults_match_the_config_defaults() -> None:
    from epic_fhir_async.sandbox import SandboxConfig

    sb = _sandbox.build_sandbox(_parse("--patients", "0"))
    defaults = SandboxConfig()
    for name in ("page_size", "session_ttl", "export_resources_per_file", "export_retention", "root_path"):
        assert getattr(sb.config, name) == getattr(defaults, name), name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--client-types", "ghost=Patient"], "no --client"),
        (["--page-size", "5000"], "invalid sandbox option"),
        (["--root-path", "FHIRProxy"], "invalid sandbox option"),
        (["--directory", "no-url"], "--directory"),
        (["--client", "bad=ftp://keys.example.test/jwks.json"], "cannot read"),
    ],
)
def test_bad_flags_exit_with_a_message(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        _sandbox.build_sandbox(_parse("--patients", "0", *argv))
