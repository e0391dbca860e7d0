"""``epic-fhir pull`` and ``epic-fhir demo`` through ``cli._main.main`` with temporary directories."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from epic_fhir_async import EpicFHIRClient, _json, generate_private_key, private_key_pem, public_jwks
from epic_fhir_async.cli import _pull as cli_pull
from epic_fhir_async.cli._main import main
from epic_fhir_async.cli._pull_sink import STATE_DIR, NDJSONSink
from epic_fhir_async.sandbox import EpicSandbox, SandboxConfig
from epic_fhir_async.sandbox._data import build_dataset

SEED = 5
TYPES = ["Patient", "Condition", "Observation?category=vital-signs"]


@pytest.fixture
def cli_sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[list[str], list[str]]:
    """A sandbox the command reaches in-process; returns (auth args, patient ids)."""
    sb = EpicSandbox(SandboxConfig(seed=SEED, patients=10))
    key = generate_private_key("RS384")
    sb.register_client("cli-test", public_jwks(key))
    pem = tmp_path / "key.pem"
    pem.write_bytes(private_key_pem(key))
    pem.chmod(0o600)

    def client(args: Any, auth: Any) -> EpicFHIRClient:
        return EpicFHIRClient(args.base_url, auth=auth, transport=sb.transport())

    monkeypatch.setattr(cli_pull, "_client", client)
    auth = [
        "--base-url",
        sb.base_url,
        "--client-id",
        "cli-test",
        "--key",
        str(pem),
        "--token-url",
        sb.token_url,
    ]
    return auth, build_dataset(seed=SEED, patients=10).patient_ids[:8]


def read_out(out: Path) -> Counter[tuple[str, str]]:
    lines: Counter[tuple[str, str]] = Counter()
    for path in out.glob("*.ndjson"):
        for raw in path.read_bytes().splitlines():
            resource = _json.loads(raw)
            assert path.name == f"{resource['resourceType']}.ndjson"
            lines[(resource["resourceType"], resource["id"])] += 1
    return lines


def test_pull_writes_one_file_per_type(cli_sandbox: tuple[list[str], list[str]], tmp_path: Path) -> None:
    auth, patients = cli_sandbox
    ids = tmp_path / "ids.txt"
    ids.write_text("# patients\n" + "\n".join(patients[2:]) + "\n")
    out = tmp_path / "out"
    rc = main(["pull", *auth, "--patients", *patients[:2], str(ids), "--types", *TYPES, "--out", str(out)])
    assert rc == 0
    got = read_out(out)
    assert max(got.values()) == 1
    assert sum(1 for k in got if k[0] == "Patient") == len(patients)
    assert {p.name for p in out.glob("*.ndjson")} == {
        "Patient.ndjson",
        "Condition.ndjson",
        "Observation.ndjson",
    }
    assert not (out / STATE_DIR).exists()
    assert not list(out.glob("*.part"))


def test_crash_then_resume_gives_the_clean_files_without_duplicates(
    cli_sandbox: tuple[list[str], list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth, patients = cli_sandbox
    clean = tmp_path / "clean"
    args = ["pull", *auth, "--patients", *patients, "--types", *TYPES, "--concurrency", "3"]
    assert main([*args, "--out", str(clean)]) == 0
    expected = read_out(clean)

    out = tmp_path / "out"
    real_add = NDJSONSink.add
    seen = 0

    async def crashing_add(self: NDJSONSink, item: Any) -> None:
        nonlocal seen
        seen += 1
        if seen == 25:
            raise KeyboardInterrupt  # the process is killed mid-pull
        await real_add(self, item)

    monkeypatch.setattr(NDJSONSink, "add", crashing_add)
    assert main([*args, "--out", str(out)]) == 130
    assert (out / STATE_DIR).exists()
    assert not list(out.glob("*.ndjson"))  # no final file from a crashed run
    assert main([*args, "--out", str(out)]) == 2  # refuses to start over silently
    monkeypatch.setattr(NDJSONSink, "add", real_add)
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert read_out(out) == expected


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
