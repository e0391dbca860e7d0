"""``epic-fhir export`` as a person runs it (a subprocess against ``epic-fhir sandbox`` on 127.0.0.1): nothing is
started on the server before everything local is checked; a job left behind by a later failure comes with the
exact commands that continue or release it (or is cancelled with ``--cancel-on-error``); Epic's "too recently"
names the job that holds the slot; ``export status``, ``export cancel`` and ``export list`` manage the jobs.

The failure after the kick-off is a real one on disk: a directory already sits where the download renames its
first file (``Patient.001.ndjson``), so the rename fails as a full or read-only disk would, mid-download.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import (
    SERVED_CLIENT,
    TRACEBACK,
    KeyPair,
    Result,
    ServedSandbox,
    Shell,
    epic_fhir_command,
)

STATUS = re.compile(r"Status URL: (\S+)")


def export(served: ServedSandbox, shell: Shell, out: str, *extra: str) -> Result:
    return shell("export", *served.auth, "--types", "Patient", "--out", out, "--poll-interval", "0.1", *extra)


def status_url(result: Result) -> str:
    found = STATUS.search(result.out)
    assert found is not None, str(result)
    return found[1]


def advised(result: Result, label: str) -> list[str]:
    """The command after ``label`` (``continue it:``, ``release it:``, ...) in the advice, as argv."""
    found = re.search(rf"{re.escape(label)}\s+epic-fhir (.+)", result.err)
    assert found is not None, str(result)
    return found[1].split()


def unwritable_dir(tmp_path: Path) -> Path:
    """An existing directory this process cannot create files in (root ignores modes: a sysfs directory)."""
    if os.geteuid() != 0:
        path = tmp_path / "read-only"
        path.mkdir()
        path.chmod(0o555)
        return path
    candidate = Path("/sys")
    try:
        (candidate / "epic-fhir-probe").touch()
    except OSError:
        return candidate
    pytest.skip("no directory here refuses root's writes")


def leave_a_job(served: ServedSandbox, shell: Shell, out: str = "first") -> tuple[Result, str]:
    """An export that fails after the kick-off (its first file cannot be renamed into place)."""
    (shell.cwd / out / "Patient.001.ndjson").mkdir(parents=True)
    result = export(served, shell, out)
    assert result.status == 1, str(result)
    return result, status_url(result)


@pytest.mark.parametrize("case", ["a file", "under a file", "not writable"])
def test_out_is_checked_before_the_kickoff(
    case: str, served: ServedSandbox, shell: Shell, tmp_path: Path
) -> None:
    (shell.cwd / "afile").write_text("x")
    out = {"a file": "afile", "under a file": "afile/sub", "not writable": str(unwritable_dir(tmp_path))}[
        case
    ]
    result = export(served, shell, out)
    assert result.status == 2, str(result)
    expected = {"a file": "is a file, not a directory", "under a file": "is a file, not a directory"}
    assert expected.get(case, "is not writable") in result.err
    assert result.err.startswith("epic-fhir export: --out ")
    assert "File exists" not in result.err
    assert TRACEBACK not in result.err
    assert served.stats().get("bulk_kickoffs", 0) == 0
    assert served.stats().get("token_requests", 0) == 0


@pytest.mark.parametrize(
    ("types", "suggestion"), [("Observations", "'Observation'"), ("patient", "'Patient'")]
)
def test_types_are_checked_before_the_kickoff_with_did_you_mean(
    types: str, suggestion: str, served: ServedSandbox, shell: Shell
) -> None:
    result = shell("export", *served.auth, "--types", types, "--out", "out")
    assert result.status == 2, str(result)
    assert f"did you mean {suggestion}" in result.err
    assert served.stats().get("bulk_kickoffs", 0) == 0
    assert not (shell.cwd / "out").exists()


def test_a_failure_after_the_kickoff_prints_the_commands_that_continue_or_release_it(
    served: ServedSandbox, shell: Shell
) -> None:
    failed, url = leave_a_job(served, shell)
    assert failed.err.startswith("epic-fhir export: Is a directory: ")
    assert "holding Epic's one export slot" in failed.err
    assert advised(failed, "continue it:") == ["export", "--resume", url]
    assert advised(failed, "release it:") == ["export", "cancel", url]
    assert "job.cancel()" not in failed.err
    assert served.stats().get("bulk_deletes", 0) == 0

    listed = shell("export", "list")
    assert listed.status == 0, str(listed)
    assert url in listed.out
    assert "into " + str(shell.cwd / "first") in listed.out
    assert stat.S_IMODE((shell.state / "epic-fhir" / "exports.json").stat().st_mode) == 0o600

    # The printed command continues the job with what the list remembers (base URL, key, --out).
    (shell.cwd / "first" / "Patient.001.ndjson").rmdir()
    resumed = shell(*advised(failed, "continue it:"), "--poll-interval", "0.1")
    assert resumed.status == 0, str(resumed)
    assert (shell.cwd / "first" / "Patient.001.ndjson").is_file()
    assert served.stats()["bulk_kickoffs"] == 1
    assert served.stats()["bulk_deletes"] == 1
    assert url not in shell("export", "list").out


def test_the_printed_cancel_command_frees_the_slot(served: ServedSandbox, shell: Shell) -> None:
    failed, url = leave_a_job(served, shell)
    blocked = export(served, shell, "second")
    assert blocked.status == 3, str(blocked)
    assert "too recently" in blocked.err
    assert url in blocked.err  # the job of this machine that holds the slot
    assert advised(blocked, "release it:") == ["export", "cancel", url]
    assert "job.cancel()" not in blocked.err

    cancelled = shell(*advised(failed, "release it:"))
    assert cancelled.status == 0, str(cancelled)
    assert f"cancelled: {url}" in cancelled.out
    assert "No unfinished exports" in shell("export", "list").out
    again = export(served, shell, "second")
    assert again.status == 0, str(again)


def test_cancel_on_error_cancels_the_job(served: ServedSandbox, shell: Shell) -> None:
    (shell.cwd / "out" / "Patient.001.ndjson").mkdir(parents=True)
    failed = export(served, shell, "out", "--cancel-on-error")
    assert failed.status == 1, str(failed)
    assert "cancelled on the server (--cancel-on-error)" in failed.err
    assert "continue it:" not in failed.err
    assert served.stats()["bulk_deletes"] == 1
    assert "No unfinished exports" in shell("export", "list").out
    assert export(served, shell, "fresh").status == 0


def test_status_says_complete_then_gone_and_the_list_follows(served: ServedSandbox, shell: Shell) -> None:
    _, url = leave_a_job(served, shell)
    complete = shell("export", "status", url)  # credentials and base URL from the list
    assert complete.status == 0, str(complete)
    assert complete.out.startswith("complete: 2 files (1 output, 1 error) of Patient")
    assert f"export --resume {url}" in complete.out

    records = json.loads(shell("export", "list", "--json").out)
    assert [r["status_url"] for r in records] == [url]
    assert records[0]["client_id"] == SERVED_CLIENT
    assert records[0]["key"] == str(served.key.private)
    assert set(records[0]) >= {"base_url", "group", "types", "out", "started", "password_env"}

    assert shell("export", "cancel", url).status == 0
    gone = shell("export", "status", url, "--client-id", SERVED_CLIENT, "--key", served.key.private)
    assert gone.status == 1, str(gone)
    assert gone.out.startswith("gone: the server no longer has")
    assert json.loads(shell("export", "list", "--json").out) == []


def test_status_of_a_job_started_elsewhere_needs_credentials(served: ServedSandbox, shell: Shell) -> None:
    _, url = leave_a_job(served, shell)
    elsewhere = Shell(shell.cwd)
    elsewhere.env["XDG_STATE_HOME"] = str(shell.cwd / "other-state")
    result = elsewhere("export", "status", url)
    assert result.status == 2, str(result)
    assert result.err.strip() == (
        "epic-fhir export status: give --client-id and --key (or set EPIC_FHIR_ACCESS_TOKEN to a bearer token)"
    )
    # The base URL comes from the status URL itself (Epic's <base>/BulkRequest/<id>).
    result = elsewhere("export", "status", url, "--client-id", SERVED_CLIENT, "--key", served.key.private)
    assert result.status == 0, str(result)
    assert result.out.startswith("complete:")


def test_ctrl_c_keeps_the_job_and_says_how_to_continue_or_release_it(
    served_key: KeyPair, shell: Shell
) -> None:
    slow = ServedSandbox(served_key, "--export-seconds", "600")
    try:
        argv = [*epic_fhir_command(), "export", *slow.auth, "--types", "Patient", "--out", "out"]
        proc = subprocess.Popen(
            argv, cwd=shell.cwd, env=shell.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("Status URL: "), first
        url = first.split()[-1]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert err.splitlines()[-1] == "epic-fhir export: interrupted"
        assert advised(Result(130, out, err), "continue it:") == ["export", "--resume", url]
        assert TRACEBACK not in err
        assert slow.stats().get("bulk_deletes", 0) == 0  # Ctrl-C never cancels

        running = shell("export", "status", url)
        assert running.status == 0, str(running)
        assert running.out.startswith("running: ")
        assert url in shell("export", "list").out
        assert shell("export", "cancel", url).status == 0
        assert slow.stats()["bulk_deletes"] == 1
    finally:
        slow.stop()


def test_an_unfinished_export_in_out_is_not_overwritten(served: ServedSandbox, shell: Shell) -> None:
    _, url = leave_a_job(served, shell)
    (shell.cwd / "first" / "Patient.001.ndjson").rmdir()
    again = export(served, shell, "first")
    assert again.status == 2, str(again)
    assert f"holds an export started here and not finished ({url})" in again.err
    assert advised(again, "release it:") == ["export", "cancel", url]
    assert served.stats()["bulk_kickoffs"] == 1
