"""``epic-fhir pull``'s live display and end summary, with faults: the numbers shown must be the real ones.

The sandbox answers a fifth of the FHIR requests with a 503 (each retried once by the client's transport, so
the display's retries must equal the sandbox's injected-fault count) and one patient id does not exist (its
Condition and Observation searches fail, so errors must be 2). Per-type counts must match the files' lines.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from epic_fhir_async import EpicFHIRClient, _json
from epic_fhir_async._retry import RetryPolicy
from epic_fhir_async.auth import generate_private_key, private_key_pem, public_jwks
from epic_fhir_async.cli import _pull as cli_pull
from epic_fhir_async.cli._main import main
from epic_fhir_async.cli._pull_display import PullDisplay
from epic_fhir_async.sandbox import EpicSandbox, SandboxConfig

SEED = 5
TYPES = ["Patient", "Condition", "Observation?category=vital-signs"]
MISSING = "eNoSuchPatient3"
#: The missing patient's Patient read-by-_id is an empty Bundle (a success); its two searches are 400s.
MISSING_FAILURES = 2


@dataclass
class Pull:
    sb: EpicSandbox
    args: list[str]
    patients: list[str]  # the ids passed, the missing one included
    out: Path


@pytest.fixture
def pull(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Pull:
    sb = EpicSandbox(SandboxConfig(seed=SEED, patients=4))
    sb.faults.error_rate = 0.2
    sb.faults.error_statuses = (503,)
    key = generate_private_key("ES384")
    sb.register_client("cli-pull-display", public_jwks(key))
    pem = tmp_path / "key.pem"
    pem.write_bytes(private_key_pem(key))
    pem.chmod(0o600)
    # Enough attempts that no request runs out (0.2**10), no backoff: a retry costs no time.
    policy = RetryPolicy(max_attempts=10, backoff_base=0.0, jitter=0.0)

    def client(args: Any, auth: Any) -> EpicFHIRClient:
        return EpicFHIRClient(args.base_url, auth=auth, transport=sb.transport(), retry=policy)

    monkeypatch.setattr(cli_pull, "_client", client)
    patients = [*sb.dataset.patient_ids[:3], MISSING]
    out = tmp_path / "out"
    args = ["pull", "--base-url", sb.base_url, "--client-id", "cli-pull-display", "--key", str(pem)]
    args += ["--token-url", sb.token_url, "--patients", *patients, "--types", *TYPES, "--out", str(out)]
    args += ["--concurrency", "4"]
    return Pull(sb, args, patients, out)


def files_per_type(out: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for path in out.glob("*.ndjson"):
        for line in path.read_bytes().splitlines():
            resource = _json.loads(line)
            assert path.name == f"{resource['resourceType']}.ndjson"
            counts[resource["resourceType"]] += 1
    return dict(counts)


def check_summary(text: str, on_disk: dict[str, int]) -> None:
    """The summary table: one row per type whose count is the file's line count, and the total row."""
    rows = {
        m[1]: int(m[2].replace(",", "")) for m in re.finditer(r"│ (\w+)\s+│\s+([\d,]+) │ (\w+)\.ndjson", text)
    }
    assert rows == on_disk
    total = re.search(r"│ total\s+│\s+([\d,]+) │", text)
    assert total is not None, text
    assert int(total[1].replace(",", "")) == sum(on_disk.values())


def check_facts(text: str, err: str, pull: Pull, on_disk: dict[str, int]) -> None:
    """The run-facts line after the table, and on stderr one line per failed stream naming the missing patient
    (with what went wrong, and no retry suggested: a 400 fails again)."""
    facts = re.search(
        r"(\d+) patients · (\d+) of \d+ streams done · [\d,]+ pages · ([\d,]+) resources in .* · "
        r"retries (\d+) · errors (\d+)",
        text,
    )
    assert facts is not None, text
    streams = len(pull.patients) * len(TYPES)
    got = (int(facts[1]), int(facts[2]), int(facts[3].replace(",", "")), int(facts[4]), int(facts[5]))
    expected_retries = pull.sb.stats["faults:error"]
    assert expected_retries > 0  # the fault knob did inject 503s
    assert got == (
        len(pull.patients),
        streams - MISSING_FAILURES,
        sum(on_disk.values()),
        expected_retries,
        MISSING_FAILURES,
    )
    assert f"epic-fhir pull: {MISSING_FAILURES} streams failed:" in err
    failed = re.findall(rf"patient {MISSING} · (\S+): 400 Bad Request for GET ", err)
    assert sorted(failed) == ["Condition", "Observation?category=vital-signs"]
    assert "a retry fails the same way until their cause is fixed" in err
    assert "--resume" not in err


def test_live_display_and_summary_on_a_terminal(
    pull: Pull, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    console = Console(file=io.StringIO(), record=True, force_terminal=True, width=200, color_system=None)
    monkeypatch.setattr(cli_pull, "make_console", lambda: console)
    assert main(pull.args) == 1  # failed streams make the exit status 1
    text = console.export_text()
    on_disk = files_per_type(pull.out)
    assert set(on_disk) == {"Patient", "Condition", "Observation"}
    assert on_disk["Patient"] == len(pull.patients) - 1

    # The bar's last frame (drawn when the display stops) shows the final counters.
    frames = re.findall(
        r"Pulling .*? (\d+)/(\d+) (\d+) patients ([\d,]+) res [\d,]+/s retries (\d+) errors (\d+)", text
    )
    assert frames, text
    last = frames[-1]
    streams = len(pull.patients) * len(TYPES)
    assert tuple(int(n.replace(",", "")) for n in last) == (
        streams,
        streams,
        len(pull.patients),
        sum(on_disk.values()),
        pull.sb.stats["faults:error"],
        MISSING_FAILURES,
    )
    check_summary(text, on_disk)
    check_facts(text, capsys.readouterr().err, pull, on_disk)


def test_plain_lines_and_summary_when_piped(
    pull: Pull, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Piped: no bar, a plain line every `plain_every` seconds; 0 prints one per event, so the run shows them.
    def every_event(console: Console, description: str, *, plain_every: float) -> PullDisplay:
        return PullDisplay(console, description, plain_every=0.0)

    monkeypatch.setattr(cli_pull, "PullDisplay", every_event)
    assert main(pull.args) == 1
    text, err = capsys.readouterr()
    assert "\x1b[" not in text  # no cursor movement or colour in a log file
    on_disk = files_per_type(pull.out)
    lines = re.findall(
        r"^Pulling: (\d+)/(\S+) streams · (\d+) patients? · ([\d,]+) resources? · retries (\d+) · errors (\d+) · ",
        text,
        flags=re.MULTILINE,
    )
    assert lines
    done = [int(line[0]) for line in lines]
    assert done == sorted(done)  # counters only grow
    streams = len(pull.patients) * len(TYPES)
    last = lines[-1]
    assert (int(last[0]), last[1], int(last[2]), int(last[3].replace(",", "")), int(last[5])) == (
        streams,
        str(streams),
        len(pull.patients),
        sum(on_disk.values()),
        MISSING_FAILURES,
    )
    assert int(last[4]) == pull.sb.stats["faults:error"]
    check_summary(text, on_disk)
    check_facts(text, err, pull, on_disk)
