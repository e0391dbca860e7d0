"""An in-process sandbox the ``pull`` and ``export`` commands reach through their ``_client`` seam, a registered
key on disk (and an encrypted copy of it), and a helper that runs ``main`` and returns (status, stdout, stderr)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from epic_fhir_async import EpicFHIRClient
from epic_fhir_async.cli import _export as cli_export
from epic_fhir_async.cli import _pull as cli_pull
from epic_fhir_async.cli._main import main
from epic_fhir_async.sandbox import EpicSandbox, SandboxConfig

from ..conftest import fast_sdk_retries

CLIENT_ID = "cli-client"


@dataclass
class CLISandbox:
    sandbox: EpicSandbox
    key: Path
    patients: list[str]
    auth: list[str] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.sandbox.stats)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CLISandbox:
    sb = EpicSandbox(SandboxConfig(seed=3, patients=4, export_seconds=0.0))
    # The key pair as a user makes it: `epic-fhir keys generate` (EC: quick, RSA takes most of a second).
    assert main(["keys", "generate", "--alg", "ES384", "--out", str(tmp_path / "keys")]) == 0
    sb.register_client(CLIENT_ID, json.loads((tmp_path / "keys" / "jwks.json").read_text()))
    pem = tmp_path / "keys" / "private_key.pem"

    def client(args: Any, auth: Any) -> EpicFHIRClient:
        return EpicFHIRClient(args.base_url, auth=auth, transport=sb.transport())

    monkeypatch.setattr(cli_pull, "_client", client)
    monkeypatch.setattr(cli_export, "_client", client)
    fast_sdk_retries(monkeypatch, 0.0)  # a refused token is retried once: at once here
    auth = [
        "--base-url",
        sb.base_url,
        "--client-id",
        CLIENT_ID,
        "--key",
        str(pem),
        "--token-url",
        sb.token_url,
    ]
    return CLISandbox(sb, pem, list(sb.dataset.patient_ids[:3]), auth)


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """``run(*argv)``: ``main(argv)`` with what it printed; argparse's own exits give their status too."""

    def call(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return status, out, err

    return call


@pytest.fixture
def encrypted_key(cli: CLISandbox, tmp_path: Path) -> Path:
    """The registered key, encrypted with the password "correct horse"."""
    native = serialization.load_pem_private_key(cli.key.read_bytes(), password=None)
    path = tmp_path / "encrypted.pem"
    path.write_bytes(
        native.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        )
    )
    path.chmod(0o600)
    return path
