"""What ``epic-fhir`` says when a person gets something wrong, run as a person runs it (a subprocess, against
``epic-fhir sandbox`` on 127.0.0.1): one line in one format (``epic-fhir <command>: ...``), in the command
line's terms (flags and commands, never Python), checked before any request, never a traceback; the server's
diagnostics shown with ``-v`` (and the message says so); a retry suggested only when a retry can help.

A request to another machine is caught by the subprocess's network guard (``Shell.network``: the names it
tried to resolve), so a command that would have sent the discovery and then the signed assertion to
``fhir.example.test`` over plain ``http://`` is seen doing so.
"""

from __future__ import annotations

import re

import pytest

from epic_fhir_async import BadRequest, RateLimited, ServerError, TransportError, UnexpectedContentError
from epic_fhir_async.cli._common import retry_may_help
from tests.cli.conftest import SERVED_CLIENT, TRACEBACK, Result, ServedSandbox, Shell

CAMILA = "erXuFYUfucBZaryVksYEcMg3"
#: Advice for Python callers that must never reach a terminal.
PYTHON_ADVICE = re.compile(
    r"\w\(\)|\b[a-z_]+=[^\s'\"]|\b[a-z]+_[a-z_]+=|\.issues\b|http_client|job\.|client\."
)
ONE_FORMAT = re.compile(r"^epic-fhir (pull|export|export status|export cancel|token|keys jwks): \S")


def assert_clean(result: Result, status: int) -> None:
    """Exit ``status``, one message in the one format, in CLI terms, no traceback."""
    assert result.status == status, str(result)
    assert TRACEBACK not in result.err, str(result)
    assert ONE_FORMAT.match(result.err), str(result)
    assert not PYTHON_ADVICE.search(result.err), str(result)
    assert "Warning:" not in result.err  # Python's warnings machinery (file:line: Category: ...)


@pytest.mark.parametrize("command", ["token", "pull", "export"])
def test_plain_http_to_another_host_is_refused_before_any_request(
    command: str, shell: Shell, served: ServedSandbox
) -> None:
    base = "http://fhir.example.test/api/FHIR/R4"
    argv = {
        "token": ["token"],
        "pull": ["pull", "--patients", CAMILA, "--out", "out"],
        "export": ["export", "--types", "Patient", "--out", "out"],
    }[command]
    result = shell(*argv, "--base-url", base, "--client-id", SERVED_CLIENT, "--key", served.key.private)
    assert_clean(result, 2)
    assert "uses plain http:// to fhir.example.test: credentials and tokens need https://" in result.err
    assert shell.network == []  # neither the discovery nor the signed assertion left
    assert not (shell.cwd / "out").exists()


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("127.0.0.1:8765/api/FHIR/R4", "has no scheme: use https://127.0.0.1:8765/api/FHIR/R4"),
        ("ftp://fhir.example.test/R4", "use an https:// URL"),
        ("https:///api/FHIR/R4", "has no host name"),
    ],
)
def test_base_url_mistakes_are_usage_errors_that_say_what_to_type(
    base: str, expected: str, shell: Shell, served: ServedSandbox
) -> None:
    result = shell("pull", "--base-url", base, "--client-id", SERVED_CLIENT, "--key", served.key.private,
                   "--patients", CAMILA, "--out", "out")  # fmt: skip
    assert_clean(result, 2)
    assert expected in result.err
    assert "UnsupportedProtocol" not in result.err


def test_a_wrong_base_path_says_the_base_url_is_probably_wrong(served: ServedSandbox, shell: Shell) -> None:
    wrong = served.origin + "/wrong/path"
    auth = ["--client-id", SERVED_CLIENT, "--key", str(served.key.private)]
    discovered = shell(
        "pull", "--base-url", wrong, *auth, "--patients", CAMILA, "--types", "Patient", "--out", "o"
    )
    assert_clean(discovered, 2)
    assert "is --base-url the FHIR R4 base (for Epic it ends in /api/FHIR/R4)? Or give" in discovered.err
    assert "--token-url" in discovered.err

    with_token_url = shell("pull", "--base-url", wrong, *auth, "--token-url", served.token_url,
                           "--patients", CAMILA, "--types", "Patient", "--out", "o")  # fmt: skip
    assert with_token_url.status == 1, str(with_token_url)
    assert "is --base-url the FHIR R4 base? For Epic it ends in /api/FHIR/R4" in with_token_url.err
    assert "No resources pulled: o was not created." in with_token_url.out
    assert "Pulled into" not in with_token_url.out
    assert not (shell.cwd / "o").exists()


def test_diagnostics_are_shown_with_v_and_the_message_says_how(served: ServedSandbox, shell: Shell) -> None:
    pull = ["pull", *served.auth, "--patients", "no-such-patient", "--types", "Condition", "--out", "o"]
    hidden = shell(*pull)
    assert hidden.status == 1, str(hidden)
    assert "400 Bad Request" in hidden.err
    assert "Invalid patient ID." not in hidden.err
    assert "add -v to show them" in hidden.err
    assert ".issues" not in hidden.err
    # A 400 fails again: no retry is suggested.
    assert "--resume" not in hidden.err + hidden.out
    assert "a retry fails the same way until their cause is fixed" in hidden.err

    for shown in (
        shell(*pull, "-v"),
        shell("-v", *pull),
    ):  # after the command, as the message says, or before
        assert shown.status == 1, str(shown)
        assert "diagnostics: Invalid patient ID." in shown.err
        assert "add -v" not in shown.err


def test_types_are_checked_locally_with_did_you_mean(served: ServedSandbox, shell: Shell) -> None:
    result = shell(
        "pull", *served.auth, "--patients", CAMILA, "--types", "Condition", "Observations", "--out", "o"
    )
    assert_clean(result, 2)
    assert "did you mean 'Observation'" in result.err
    assert served.stats().get("fhir_requests", 0) == 0
    assert served.stats().get("token_requests", 0) == 0
    assert not (shell.cwd / "o").exists()


def test_out_that_is_a_file_is_not_a_directory(served: ServedSandbox, shell: Shell) -> None:
    (shell.cwd / "afile").write_text("x")
    result = shell("pull", *served.auth, "--patients", CAMILA, "--types", "Patient", "--out", "afile")
    assert_clean(result, 2)
    assert "--out afile is a file, not a directory" in result.err
    assert "File exists" not in result.err


def test_a_reference_in_patients_asks_for_the_bare_id(served: ServedSandbox, shell: Shell) -> None:
    result = shell("pull", *served.auth, "--patients", f"Patient/{CAMILA}", "--out", "o")
    assert_clean(result, 2)
    assert "give the bare id (what follows 'Patient/'), not a reference" in result.err
    assert "read(" not in result.err


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["pull", "--patients", "a?b", "--out", "o"], 2),
        (["pull", "--patients", CAMILA, "--types", "Patient/x", "--out", "o"], 2),
        (["export", "--types", "patient", "--out", "o"], 2),
        (["export", "status", "not-a-url"], 2),
        (["export", "cancel", "https://other.example.test/api/FHIR/R4/BulkRequest/x"], 2),
    ],
)
def test_careless_input_gets_one_clean_line(
    argv: list[str], status: int, served: ServedSandbox, shell: Shell
) -> None:
    auth = served.auth if argv[1] not in ("status", "cancel") else served.auth[2:]
    if argv[:2] == ["export", "cancel"]:
        auth = served.auth  # --base-url names another origin than the status URL
    result = shell(*argv, *auth)
    assert_clean(result, status)
    assert len(result.err.strip().splitlines()) == 1, str(result)


def test_a_refused_client_gets_epics_hint_in_cli_terms(served: ServedSandbox, shell: Shell) -> None:
    result = shell(
        "token", "--base-url", served.base_url, "--client-id", "nobody", "--key", served.key.private
    )
    assert result.status == 1, str(result)
    assert result.err.startswith("epic-fhir token: token request to ")
    assert "invalid_client" in result.err
    assert "Hint:" in result.err
    assert TRACEBACK not in result.err
    # The served sandbox says why it refused (Epic never does).
    assert "token request refused: unknown_client (no client is registered with this client id" in served.log


@pytest.mark.parametrize("kind", ["garbage", "public"])
def test_a_key_file_that_is_no_private_key_gets_the_error_alone(
    kind: str, served: ServedSandbox, shell: Shell
) -> None:
    path = shell.cwd / f"{kind}.pem"
    path.write_bytes(b"not a key\n" if kind == "garbage" else served.key.jwks.read_bytes())
    path.chmod(0o644)
    result = shell("pull", "--base-url", served.base_url, "--client-id", SERVED_CLIENT, "--key", path.name,
                   "--patients", CAMILA, "--out", "o")  # fmt: skip
    assert_clean(result, 2)
    assert len(result.err.strip().splitlines()) == 1, str(result)
    assert "warning" not in result.err.lower()
    assert "not a private key" in result.err or "is a public key" in result.err


def test_a_readable_private_key_gets_one_warning_line(served: ServedSandbox, shell: Shell) -> None:
    path = shell.cwd / "shared.pem"
    path.write_bytes(served.key.private.read_bytes())
    path.chmod(0o644)
    result = shell("token", "--base-url", served.base_url, "--client-id", SERVED_CLIENT, "--key", path.name)
    assert result.status == 0, str(result)
    assert result.err.splitlines() == [
        "epic-fhir token: warning: key file shared.pem can be read by other users (mode 644); run: chmod 600 "
        "shared.pem"
    ]


def test_help_describes_token_and_names_the_token_variable(shell: Shell) -> None:
    token = shell("token", "--help")
    assert "Ask the token endpoint for a SMART Backend Services access token" in token.out
    for argv in (["--help"], ["pull", "--help"], ["export", "--help"], ["export", "status", "--help"]):
        result = shell(*argv)
        assert result.status == 0, str(result)
        assert "EPIC_FHIR_ACCESS_TOKEN" in result.out, argv
    assert "epic-fhir export cancel STATUS_URL" in shell("export", "--help").out


def test_an_expired_token_from_the_environment_says_where_it_came_from(
    served: ServedSandbox, shell: Shell
) -> None:
    result = shell("pull", "--base-url", served.base_url, "--patients", CAMILA, "--types", "Patient",
                   "--out", "o", env={"EPIC_FHIR_ACCESS_TOKEN": "expired-or-made-up"})  # fmt: skip
    assert result.status == 1, str(result)
    assert "401 Unauthorized" in result.err
    assert "(the token in $EPIC_FHIR_ACCESS_TOKEN: get a new one)" in result.err
    assert "bearer token refused (401): unknown or expired" in served.log


def test_a_retry_is_suggested_only_for_failures_a_retry_can_fix() -> None:
    url = "https://fhir.example.test/api/FHIR/R4/Condition"
    assert retry_may_help(TransportError("connection reset", method="GET", url=url))
    assert retry_may_help(RateLimited("429", status_code=429, method="GET", url=url))
    assert retry_may_help(ServerError("503", status_code=503, method="GET", url=url))
    assert not retry_may_help(BadRequest("400", status_code=400, method="GET", url=url))
    html = UnexpectedContentError("html", status_code=404, content_type="text/html", method="GET", url=url)
    assert not retry_may_help(html)
