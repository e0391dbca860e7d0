"""``epic-fhir sandbox`` argument handling (the server itself is covered by test_sandbox_serve)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from epic_fhir_async.cli import _sandbox


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _sandbox.register(parser.add_subparsers())
    return parser.parse_args(["sandbox", *argv])


def test_defaults_bind_loopback_8765() -> None:
    args = _parse()
    assert (args.host, args.port, args.seed, args.patients) == ("127.0.0.1", 8765, 0, 100)
    assert args.token_lifetime == 3600.0
    assert args.func is _sandbox.run


def test_flags_are_parsed(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "EC"}]}), encoding="utf-8")
    args = _parse(
        "--client", f"my-client={jwks}", "--rate-limit", "5", "--drop-rate", "0.1", "--latency-ms", "20"
    )
    assert (args.rate_limit, args.drop_rate, args.latency_ms) == (5.0, 0.1, 20.0)
    assert _sandbox._load_clients(args.client) == [("my-client", {"keys": [{"kty": "EC"}]})]


@pytest.mark.parametrize("spec", ["no-equals", "=file.json", "id="])
def test_bad_client_spec_exits(spec: str) -> None:
    with pytest.raises(SystemExit):
        _sandbox._load_clients([spec])


def test_missing_jwks_file_exits(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="cannot read"):
        _sandbox._load_clients([f"c={tmp_path / 'absent.json'}"])


@pytest.mark.parametrize(
    ("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False)]
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert _sandbox._is_loopback(host) is loopback
