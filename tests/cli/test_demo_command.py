"""``epic-fhir demo`` end to end with its pull and its bulk step, and when the bulk step breaks: it still prints
what the pull got, says why the bulk step failed in one line, and exits 1."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from epic_fhir_async import _json
from epic_fhir_async.cli import _demo
from epic_fhir_async.cli._main import main


def read_out(out: Path) -> Counter[tuple[str, str]]:
    lines: Counter[tuple[str, str]] = Counter()
    for path in out.glob("*.ndjson"):
        for raw in path.read_bytes().splitlines():
            resource = _json.loads(raw)
            assert path.name == f"{resource['resourceType']}.ndjson"
            lines[(resource["resourceType"], resource["id"])] += 1
    return lines


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--patients", "3", "--out", str(out), "--concurrency", "4"]) == 0
    text = capsys.readouterr().out
    files = {p.name for p in out.glob("*.ndjson")}
    assert {"Patient.ndjson", "Observation.ndjson", "Condition.ndjson"} <= files
    assert "token request" in text
    assert "Next steps" in text
    pulled = read_out(out)
    assert sum(pulled.values()) > 0
    # The bulk step ran: its line names what landed in out/bulk/, file by file (a broken step exits 1).
    line = re.search(r"Bulk \$export of the sandbox Group into .*/bulk/: (.+)", text)
    assert line is not None, text
    printed = {t: int(n.replace(",", "")) for n, t in re.findall(r"(\d[\d,]*) (\w+)", line[1])}
    bulk: Counter[tuple[str, str]] = Counter()
    for path in (out / "bulk").glob("*.ndjson"):
        rows = [_json.loads(raw) for raw in path.read_bytes().splitlines()]
        assert rows, path
        bulk.update((r["resourceType"], r["id"]) for r in rows if r["resourceType"] != "OperationOutcome")
    assert max(bulk.values()) == 1
    assert set(printed) == {"Patient", "Condition"}
    assert printed == dict(Counter(rtype for rtype, _ in bulk))
    assert min(printed.values()) > 0
    # The sandbox Group is every patient the demo pulled: the export holds the same Patients and Conditions.
    assert set(bulk) == {key for key in pulled if key[0] in printed}


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
    assert failed[0].startswith("Bulk $export failed: the $export kick-off was refused")
    assert "404" in failed[0]
    assert not list((out / "bulk").glob("*.ndjson"))
