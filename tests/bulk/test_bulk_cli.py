"""``epic-fhir export`` through ``cli._main.main`` against the in-process sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from epic_fhir_async import EpicFHIRClient, _json, generate_private_key, private_key_pem, public_jwks
from epic_fhir_async._bulk_download import SIDECAR_NAME
from epic_fhir_async.cli import _export as cli_export
from epic_fhir_async.cli._main import main
from epic_fhir_async.sandbox import EpicSandbox


@pytest.fixture
def cli_sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[EpicSandbox, list[str]]:
    sb = EpicSandbox(seed=0, patients=8)
    sb.bulk.export_seconds = 0.0
    key = generate_private_key("RS384")
    sb.register_client("cli-bulk", public_jwks(key))
    pem = tmp_path / "key.pem"
    pem.write_bytes(private_key_pem(key))
    pem.chmod(0o600)

    def client(args: Any, auth: Any) -> EpicFHIRClient:
        return EpicFHIRClient(args.base_url, auth=auth, transport=sb.transport())

    monkeypatch.setattr(cli_export, "_client", client)
    return sb, ["--base-url", sb.base_url, "--client-id", "cli-bulk", "--key", str(pem)]


def test_export_downloads_then_deletes(
    cli_sandbox: tuple[EpicSandbox, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sb, auth = cli_sandbox
    out = tmp_path / "out"
    code = main(
        ["export", *auth, "--types", "Patient", "Condition", "--out", str(out), "--poll-interval", "0.01"]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "Status URL: " + sb.base_url + "/BulkRequest/" in text
    status_url = (out / "status-url.txt").read_text().strip()
    assert status_url in text
    state = _json.loads((out / SIDECAR_NAME).read_bytes())
    counts: dict[str, int] = {}
    for entry in state["files"].values():
        counts[entry["type"]] = counts.get(entry["type"], 0) + entry["lines"]
    expected: dict[str, int] = {}
    for ref in state["manifest"]["output"]:
        expected[ref["type"]] = expected.get(ref["type"], 0) + ref["count"]
    assert {k: v for k, v in counts.items() if k in expected} == expected
    assert set(expected) == {"Patient", "Condition"}
    assert sb.stats["bulk_deletes"] == 1

    # The job is gone on the server: resuming it now is a clear error naming --resume.
    code = main(["export", *auth, "--out", str(out), "--resume", status_url, "--poll-interval", "0.01"])
    assert code == 1
    assert "--resume" in capsys.readouterr().err


def test_export_too_soon_exit_code(cli_sandbox: tuple[EpicSandbox, list[str]], tmp_path: Path) -> None:
    sb, auth = cli_sandbox
    sb.bulk.cooldown_seconds = 3600.0
    args = ["export", *auth, "--types", "Patient", "--out", str(tmp_path / "o"), "--poll-interval", "0.01"]
    assert main(args) == 0
    assert main(args) == 3
