"""``epic-fhir export`` through ``cli._main.main`` against the in-process sandbox: a job downloaded then
deleted, the exit code of a kick-off refused as too soon, ``--password-env``, and ``--resume STATUS_URL`` of a
job that is gone (an error) or still running on the server.

The running job: the first run is interrupted right after the kick-off, as a crash or Ctrl-C would, while the
sandbox job needs 30 minutes of (sandbox) time; the second run resumes it from the printed status URL, polls it
to completion, downloads and deletes it.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, _json
from epic_fhir_async.auth import generate_private_key, private_key_pem, public_jwks
from epic_fhir_async.bulk._download import SIDECAR_NAME
from epic_fhir_async.cli import _export as cli_export
from epic_fhir_async.cli._main import main
from epic_fhir_async.sandbox import EpicSandbox, SandboxClock
from epic_fhir_async.sandbox._bulk_plan import group_members

if TYPE_CHECKING:
    from tests.cli.conftest import CLISandbox, Run


@pytest.fixture
def export_sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[EpicSandbox, list[str]]:
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
    export_sandbox: tuple[EpicSandbox, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sb, auth = export_sandbox
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


def test_export_too_soon_exit_code(export_sandbox: tuple[EpicSandbox, list[str]], tmp_path: Path) -> None:
    sb, auth = export_sandbox
    sb.bulk.cooldown_seconds = 3600.0
    args = ["export", *auth, "--types", "Patient", "--out", str(tmp_path / "o"), "--poll-interval", "0.01"]
    assert main(args) == 0
    assert main(args) == 3


def test_export_takes_password_env(
    cli: CLISandbox, encrypted_key: Path, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPIC_KEY_PW", "correct horse")
    argv = [
        "export",
        *cli.auth,
        "--types",
        "Patient",
        "--out",
        str(tmp_path / "bulk"),
        "--poll-interval",
        "0.01",
    ]
    argv[argv.index("--key") + 1] = str(encrypted_key)
    status, _, err = run(*argv, "--password-env", "EPIC_KEY_PW")
    assert status == 0, err
    assert list((tmp_path / "bulk").glob("*.ndjson"))
    del argv[argv.index("--key") : argv.index("--key") + 2]
    status, _, err = run(*argv)  # a client id without a key
    assert (status, err.strip()) == (2, "epic-fhir export: --client-id and --key go together: give both")


# -- --resume of a job still running on the server ---------------------------------------------------------


RESUME_CLIENT_ID = "cli-export-resume"


class ClockOnPoll(httpx.AsyncBaseTransport):
    """Moves the sandbox clock ``step`` seconds before each status poll, as if that much time went by, and drops
    the poll's ``Retry-After`` (Epic may omit it): the sandbox's real-seconds hint would be slept on."""

    def __init__(self, sb: EpicSandbox, step: float) -> None:
        self.sb = sb
        self.step = step
        self.inner = sb.transport()
        self.polls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        tail = request.url.path.split("/BulkRequest/")
        if request.method == "GET" and len(tail) == 2 and "/" not in tail[1]:
            self.polls += 1
            self.sb.clock.advance(self.step)
            response = await self.inner.handle_async_request(request)
            headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "retry-after"]
            return httpx.Response(response.status_code, headers=headers, stream=response.stream)
        return await self.inner.handle_async_request(request)


def expected_counts(sb: EpicSandbox, types: list[str]) -> dict[str, int]:
    """What the Group holds, counted from the dataset itself (not from the manifest the CLI trusts)."""
    dataset = sb.bulk.dataset
    members = set(group_members(dataset, str(dataset.group_id)) or ())
    counts: dict[str, int] = {}
    for rtype in types:
        table = dataset.resources.get(rtype, {})
        if rtype == "Patient":
            counts[rtype] = sum(1 for rid in table if rid in members)
        else:
            refs = (r.get("subject", {}).get("reference", "") for r in table.values())
            counts[rtype] = sum(1 for ref in refs if ref.removeprefix("Patient/") in members)
    return counts


def test_resume_runs_a_live_job_to_completion(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Frozen at the real time: the sandbox checks the signed assertion's iat/exp against its own clock.
    sb = EpicSandbox(seed=0, patients=8, clock=SandboxClock(frozen_at=time.time()))
    sb.bulk.export_seconds = 1800.0  # still running after the kick-off until the clock moves on
    sb.bulk.resources_per_file = 10  # several files per type
    key = generate_private_key("ES384")
    sb.register_client(RESUME_CLIENT_ID, public_jwks(key))
    pem = tmp_path / "key.pem"
    pem.write_bytes(private_key_pem(key))
    pem.chmod(0o600)
    transport = ClockOnPoll(sb, step=600.0)

    def client(args: Any, auth: Any) -> EpicFHIRClient:
        return EpicFHIRClient(args.base_url, auth=auth, transport=transport)

    monkeypatch.setattr(cli_export, "_client", client)
    auth = ["--base-url", sb.base_url, "--client-id", RESUME_CLIENT_ID, "--key", str(pem)]
    out = tmp_path / "out"
    types = ["Patient", "Condition"]

    # -- run 1: kicked off, then interrupted before the first poll (the job keeps running on the server)
    real_run_job = cli_export._run_job

    async def interrupted(*args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_export, "_run_job", interrupted)
    code = main(["export", *auth, "--types", *types, "--out", str(out), "--poll-interval", "0.01"])
    assert code == 130
    first = capsys.readouterr()
    status_url = (out / "status-url.txt").read_text().strip()
    assert f"Status URL: {status_url}" in first.out
    assert f"continue it:  epic-fhir export --resume {status_url}" in first.err
    assert f"release it:   epic-fhir export cancel {status_url}" in first.err
    assert status_url.startswith(sb.base_url + "/BulkRequest/")
    assert sb.stats["bulk_kickoffs"] == 1
    assert sb.stats["bulk_deletes"] == 0
    assert transport.polls == 0
    assert not list(out.glob("*.ndjson"))

    # -- run 2: --resume polls the same job (no new kick-off) until complete, downloads, deletes
    monkeypatch.setattr(cli_export, "_run_job", real_run_job)
    resume = ["--resume", status_url, "--poll-interval", "0.01", "--concurrency", "3"]
    code = main(["export", *auth, "--out", str(out), *resume])
    second = capsys.readouterr()
    assert code == 0, second.err
    assert sb.stats["bulk_kickoffs"] == 1
    assert transport.polls == 3  # 1800 s of export at 600 s per poll: two 202s, then the manifest
    assert sb.stats["bulk_deletes"] == 1

    expected = expected_counts(sb, types)
    assert expected["Patient"] == len(sb.dataset.patient_ids)  # the default Group is every patient
    assert expected["Condition"] > 10
    on_disk: Counter[str] = Counter()
    ids: set[tuple[str, str]] = set()
    files: Counter[str] = Counter()  # output files per type, by what they hold (error files apart)
    outcomes = 0
    for path in out.glob("*.ndjson"):
        resources = [_json.loads(line) for line in path.read_bytes().splitlines()]
        assert resources, path
        kinds = {r["resourceType"] for r in resources}
        assert len(kinds) == 1, path
        (kind,) = kinds
        if kind == "OperationOutcome":
            outcomes += len(resources)
            continue
        files[kind] += 1
        on_disk[kind] += len(resources)
        ids.update((kind, r["id"]) for r in resources)
    assert dict(on_disk) == expected
    assert len(ids) == sum(expected.values())  # no line twice
    state = _json.loads((out / SIDECAR_NAME).read_bytes())
    assert state["status_url"] == status_url

    # -- the summary: one row per type with its files and resources, then the totals in the caption
    text = second.out
    assert f"Status URL: {status_url}" in text
    assert "Server: Processing: 33% (poll 1" in text  # the first poll's X-Progress, printed as it came
    assert (
        f"Server: complete, {sum(files.values()) + 1} files ({sum(files.values())} output, 1 error)" in text
    )
    for rtype, count in expected.items():
        row = re.search(rf"│ {rtype}\s+│\s+(\d+) │\s+([\d,]+) │", text)
        assert row is not None, text
        assert (int(row[1]), int(row[2].replace(",", ""))) == (files[rtype], count)
    total = sum(expected.values())
    caption = re.search(
        r"([\d,]+) resources in (\d+) files \((\d+) already complete\) · (\d+) OperationOutcomes?", text
    )
    assert caption is not None, text
    numbers = tuple(int(n.replace(",", "")) for n in caption.groups())
    assert numbers == (total, sum(files.values()), 0, outcomes)
