"""``epic-fhir pull``: one file per type, crash then ``--resume``; ``--patients`` that are mistyped files,
set-up errors that leave no state and no resume hint, ``--password-env``, reruns of a finished pull, output
that is not a terminal."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from epic_fhir_async import EpicFHIRClient, RetryPolicy, _json
from epic_fhir_async.auth import generate_private_key, private_key_pem, public_jwks
from epic_fhir_async.cli import _pull as cli_pull
from epic_fhir_async.cli._main import main
from epic_fhir_async.cli._pull_sink import STATE_DIR
from epic_fhir_async.pull import NDJSONSink
from epic_fhir_async.sandbox import EpicSandbox, SandboxConfig
from epic_fhir_async.sandbox._data import build_dataset
from tests._processes import free_port
from tests.cli.conftest import SERVED_CLIENT, KeyPair, ServedSandbox, Shell

if TYPE_CHECKING:
    from tests.cli.conftest import CLISandbox, Run

TYPES = ["--types", "Patient", "Condition"]


def pull(cli: CLISandbox, out: Path, *extra: str) -> list[str]:
    return ["pull", *cli.auth, *TYPES, "--out", str(out), *extra]


# -- --patients ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arg", ["nofile.txt", "ids.CSV", "export.ndjson", "lists/ids", "./ids"])
def test_a_missing_file_is_a_usage_error_not_a_patient_id(
    arg: str, cli: CLISandbox, run: Run, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    status, _, err = run(*pull(cli, out), "--patients", arg)
    assert status == 2
    assert f"--patients {arg}: no such file" in err
    assert not out.exists()
    assert cli.stats.get("token_requests", 0) == 0  # refused before any request


def test_ids_with_dots_and_files_of_ids_still_work(cli: CLISandbox, run: Run, tmp_path: Path) -> None:
    dotted = "eD.LxhDyX35TntF77l7etUA3"  # an Epic id with a dot and no file extension
    others = [p for p in cli.patients if p != dotted]
    ids = tmp_path / "ids.txt"
    ids.write_text("\ufeff# a BOM and a comment\n" + "\n".join(others) + "\n")
    status, _, err = run(*pull(cli, tmp_path / "out"), "--patients", dotted, str(ids))
    assert status == 0, err
    assert (tmp_path / "out" / "Patient.ndjson").read_text().count("\n") == len(others) + 1


def test_a_file_that_is_not_a_list_of_ids_names_the_line_but_not_its_content(
    cli: CLISandbox, run: Run, tmp_path: Path
) -> None:
    ids = tmp_path / "patients.csv"
    ids.write_text(f"{cli.patients[0]}\n{cli.patients[1]},Jane Doe,1970-01-01\n")
    status, _, err = run(*pull(cli, tmp_path / "out"), "--patients", str(ids))
    assert status == 2
    assert f"{ids} line 2:" in err
    assert "Jane" not in err  # the line may hold patient data


@pytest.mark.parametrize("arg", ["two words", "a,b"])
def test_an_argument_that_is_neither_file_nor_id_is_refused(
    arg: str, cli: CLISandbox, run: Run, tmp_path: Path
) -> None:
    status, _, err = run(*pull(cli, tmp_path / "out"), "--patients", arg)
    assert status == 2
    assert "neither a file nor a patient id" in err


# -- set-up errors leave nothing behind ------------------------------------------------------------------


@pytest.mark.parametrize(
    "problem", ["missing key", "not a key", "unregistered client", "unreachable", "bad type"]
)
def test_set_up_errors_write_nothing_and_give_no_resume_hint(
    problem: str, cli: CLISandbox, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    argv = pull(cli, out, "--patients", *cli.patients)
    expected = {"missing key": 2, "not a key": 2, "unregistered client": 1, "unreachable": 1, "bad type": 2}
    if problem == "missing key":
        argv[argv.index("--key") + 1] = str(tmp_path / "absent.pem")
        message = "no such key file"
    elif problem == "not a key":
        (tmp_path / "junk.pem").write_text("hello\n")
        (tmp_path / "junk.pem").chmod(0o600)
        argv[argv.index("--key") + 1] = str(tmp_path / "junk.pem")
        message = "is not a private key"
    elif problem == "unregistered client":
        argv[argv.index("--client-id") + 1] = "nobody"
        message = "invalid_client"
    elif problem == "unreachable":
        base = f"http://127.0.0.1:{free_port()}/api/FHIR/R4"
        argv[argv.index("--base-url") + 1] = base
        argv[argv.index("--token-url") + 1] = f"{base}/token"

        def no_retries(args: Any, auth: Any) -> EpicFHIRClient:
            return EpicFHIRClient(args.base_url, auth=auth, retry=RetryPolicy(max_attempts=1))

        monkeypatch.setattr(cli_pull, "_client", no_retries)
        message = f"cannot connect to {base}/token: the server is not reachable (connection refused)"
    else:
        argv.extend(["--types", "Practitioner"])
        message = "not patient-scoped"
    status, stdout, err = run(*argv)
    assert status == expected[problem]
    assert message in err
    assert "--resume" not in err + stdout
    assert "Traceback" not in err
    assert not out.exists()


def test_a_pull_where_no_stream_completes_keeps_no_state(
    cli: CLISandbox, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPIC_FHIR_ACCESS_TOKEN", "not-a-token-the-sandbox-issued")
    argv = pull(cli, tmp_path / "out", "--patients", *cli.patients)
    del argv[argv.index("--client-id") : argv.index("--key") + 2]  # bearer token auth: no token request first
    status, stdout, err = run(*argv)
    assert status == 1
    assert not (tmp_path / "out" / STATE_DIR).exists()
    assert "--resume" not in stdout + err


def test_interrupted_before_any_stream_completes_leaves_nothing(
    cli: CLISandbox, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def interrupted(self: NDJSONSink, item: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(NDJSONSink, "add", interrupted)
    status, _, err = run(*pull(cli, tmp_path / "out", "--patients", *cli.patients))
    assert status == 130
    assert "interrupted" in err
    assert "--resume" not in err
    assert not (tmp_path / "out").exists()


def test_interrupted_after_some_streams_says_how_to_resume(
    cli: CLISandbox, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_add = NDJSONSink.add

    async def interrupted_later(self: NDJSONSink, item: Any) -> None:
        if self.has_progress:
            raise KeyboardInterrupt
        await real_add(self, item)

    monkeypatch.setattr(NDJSONSink, "add", interrupted_later)
    out = tmp_path / "out"
    status, _, err = run(*pull(cli, out, "--patients", *cli.patients, "--concurrency", "1"))
    assert status == 130
    assert f"re-run with --resume to continue in {out}" in err
    assert (out / STATE_DIR).is_dir()


# -- --password-env ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("password", "status", "message"),
    [
        (None, 2, "is encrypted: name the variable holding its password with --password-env"),
        ("", 2, "the environment variable EPIC_KEY_PW is not set or empty"),
        ("wrong horse", 2, "wrong password for key file"),
        ("correct horse", 0, ""),
    ],
)
def test_password_env_for_an_encrypted_key(
    password: str | None,
    status: int,
    message: str,
    cli: CLISandbox,
    encrypted_key: Path,
    run: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = pull(cli, tmp_path / "out", "--patients", cli.patients[0])
    argv[argv.index("--key") + 1] = str(encrypted_key)
    if password is not None:
        monkeypatch.setenv("EPIC_KEY_PW", password)
        argv += ["--password-env", "EPIC_KEY_PW"]
    got, stdout, err = run(*argv)
    assert got == status, err
    assert message in err
    assert "horse" not in stdout + err  # never echoed


def test_password_env_on_a_clear_key_is_refused(
    cli: CLISandbox, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPIC_KEY_PW", "pw")
    argv = pull(cli, tmp_path / "out", "--patients", cli.patients[0], "--password-env", "EPIC_KEY_PW")
    status, _, err = run(*argv)
    assert status == 2
    assert "is not encrypted: drop --password-env" in err


# -- rerunning a finished pull -------------------------------------------------------------------------------
def test_resuming_a_finished_pull_says_it_is_complete_and_how_to_start_afresh(
    cli: CLISandbox, run: Run, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = pull(cli, out, "--patients", *cli.patients, "--resume")
    assert run(*argv)[0] == 0
    before = cli.stats
    status, stdout, _ = run(*argv)
    assert status == 0
    text = " ".join(stdout.split())
    assert f"Already complete: {out} holds a finished pull (Condition.ndjson, Patient.ndjson)" in text
    assert "run without --resume" in text
    assert cli.stats == before  # not a single request

    status, stdout, _ = run(*argv[:-1])  # without --resume: pulled again, and said so
    assert status == 0
    assert "Starting afresh" in stdout


# -- output that is not a terminal --------------------------------------------------------------------------
def test_piped_output_has_no_control_codes_and_whole_lines(cli: CLISandbox, run: Run, tmp_path: Path) -> None:
    status, stdout, _ = run(
        *pull(cli, tmp_path / "a-rather-long-output-directory-name", "--patients", *cli.patients)
    )
    assert status == 0
    assert "\x1b" not in stdout
    assert "\r" not in stdout
    facts = [line for line in stdout.splitlines() if "streams done" in line]
    assert len(facts) == 1
    assert facts[0].endswith("errors 0")  # one line, not wrapped at 80 columns
    assert len(facts[0]) > 80


# -- a pull, a crash and --resume -------------------------------------------------------------------------


SEED = 5


PULL_TYPES = ["Patient", "Condition", "Observation?category=vital-signs"]


@pytest.fixture
def pull_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[list[str], list[str]]:
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


def test_pull_writes_one_file_per_type(pull_setup: tuple[list[str], list[str]], tmp_path: Path) -> None:
    auth, patients = pull_setup
    ids = tmp_path / "ids.txt"
    ids.write_text("# patients\n" + "\n".join(patients[2:]) + "\n")
    out = tmp_path / "out"
    rc = main(
        ["pull", *auth, "--patients", *patients[:2], str(ids), "--types", *PULL_TYPES, "--out", str(out)]
    )
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
    pull_setup: tuple[list[str], list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth, patients = pull_setup
    clean = tmp_path / "clean"
    args = ["pull", *auth, "--patients", *patients, "--types", *PULL_TYPES, "--concurrency", "3"]
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


# -- as a person runs it -------------------------------------------------------------------------------------
def _row(text: str, rtype: str) -> list[str]:
    found = re.search(rf"│ {rtype}\s+│(.*)│\s*$", text, re.MULTILINE)
    assert found is not None, text
    return [cell.strip() for cell in found[1].split("│")]


def test_after_resume_the_summary_shows_this_run_and_the_whole_files(
    served_key: KeyPair, served: ServedSandbox, shell: Shell
) -> None:
    patients = ["--patients", "erXuFYUfucBZaryVksYEcMg3", "eq081-VQEgP8drUUqCWzHfw3"]
    # Run 1: the client may read Patient only, so both Condition searches are refused (403) and kept for later.
    narrow = ServedSandbox(served_key, "--client-types", f"{SERVED_CLIENT}=Patient")
    try:
        first = shell("pull", *narrow.auth, *patients, *TYPES, "--out", "o")
    finally:
        narrow.stop()
    assert first.status == 1, str(first)
    assert "2 streams failed" in first.err
    assert _row(first.out, "Patient") == ["2", "Patient.ndjson", _row(first.out, "Patient")[2]]

    # Run 2 (another server, the same registration): only the two Condition streams run.
    second = shell("pull", *served.auth, *patients, *TYPES, "--out", "o", "--resume")
    assert second.status == 0, str(second)
    assert "Resuming: 2 streams already complete in o" in second.out
    header = next(line for line in second.out.splitlines() if "resource type" in line)
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")][:3] == [
        "resource type",
        "this run",
        "in file",
    ]
    conditions = len((shell.cwd / "o" / "Condition.ndjson").read_bytes().splitlines())
    assert conditions > 0
    assert _row(second.out, "Patient")[:3] == ["0", "2", "Patient.ndjson"]
    assert _row(second.out, "Condition")[:3] == [f"{conditions:,}", f"{conditions:,}", "Condition.ndjson"]
    assert "2 patients · 2 of 4 streams done, 2 skipped (already complete) · " in second.out
    assert " this run · " in second.out
