"""``epic-fhir demo`` when its bulk step breaks: it still prints what the pull got, says why the bulk step
failed in one line, and exits 1 (it used to print a yellow "skipped" and exit 0, so nothing noticed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from epic_fhir_async.cli import _demo
from epic_fhir_async.cli._main import main


def test_a_failed_bulk_step_fails_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_demo, "EPIC_SANDBOX_BULK_GROUP_ID", "eNoSuchGroup")  # the kick-off gets a 404
    monkeypatch.setattr(
        _demo, "DEMO_TYPES", ("Patient", "Condition")
    )  # a short pull: the bulk step is the point
    out = tmp_path / "demo"
    code = main(["demo", "--patients", "1", "--out", str(out), "--concurrency", "4"])
    text = capsys.readouterr().out
    assert code == 1, text
    # What the pull got is still there and still summarised.
    assert (out / "Patient.ndjson").read_bytes().strip()
    assert f"Pulled into {out}/" in text
    assert "errors 0" in text  # the pull itself was fine: the exit status is the bulk step's
    assert "Next steps" in text
    # One line naming the failure, and no success line or files for the bulk step.
    failed = [line for line in text.splitlines() if line.startswith("Bulk $export")]
    assert len(failed) == 1, text
    assert failed[0].startswith("Bulk $export failed: BulkExportError: the $export kick-off was refused")
    assert "404" in failed[0]
    assert not list((out / "bulk").glob("*.ndjson"))
