"""``epic-fhir`` as a whole: no tracebacks for a port in use, a closed pipe or Ctrl-C, ``-v`` logging for one
run, argparse-level checks of numbers, documented exit codes, plain progress when piped."""

from __future__ import annotations

import gc
import io
import logging
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from rich.console import Console

from epic_fhir_async import TransportError
from epic_fhir_async.auth import generate_private_key
from epic_fhir_async.cli import _keys
from epic_fhir_async.cli._common import EXIT_CODES_HELP, CLIError, PlainProgress, describe
from epic_fhir_async.cli._main import _handled, build_parser, main
from epic_fhir_async.cli._pull_display import PullDisplay
from epic_fhir_async.pull._values import PullProgress

if TYPE_CHECKING:
    from tests.cli.conftest import Run


def test_sandbox_on_a_port_in_use_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # serve() closes its socket when bind() fails: a leaked one would be a ResourceWarning, an error here.
        status = main(["sandbox", "--port", str(port), "--patients", "0"])
        gc.collect()
    assert status == 1
    assert capsys.readouterr().err.splitlines() == [
        f"epic-fhir sandbox: cannot listen on 127.0.0.1:{port}: Address already in use (another sandbox? "
        "choose another --port, or --port 0 for any free one)"
    ]


class _ClosedPipe(io.StringIO):
    """stdout after ``| head`` has exited: every write fails with EPIPE."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "generate", "--alg", "ES256", "--out", "{tmp}"],  # plain print()s
        ["sandbox", "--port", "0", "--patients", "0"],  # prints inside the server's task group
        ["--version"],  # argparse's own output
    ],
)
def test_output_into_a_closed_pipe_exits_141_quietly(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main([a.format(tmp=tmp_path) for a in argv]) == 141
    assert capsys.readouterr().err == ""


class _Group(Exception):
    """What anyio raises from a task group: duck-typed like ``_bulk_stream.unwrap_group`` (3.10 has none)."""

    def __init__(self, *exceptions: BaseException) -> None:
        super().__init__("group")
        self.exceptions = exceptions


@pytest.mark.parametrize(
    ("exc", "status", "message"),
    [
        (_Group(RuntimeError("cancelled sibling"), KeyboardInterrupt()), 130, "epic-fhir pull: interrupted"),
        (_Group(_Group(CLIError("bad thing", 2))), 2, "epic-fhir pull: bad thing"),
        (SystemExit("invalid sandbox option: x"), 2, "epic-fhir pull: invalid sandbox option: x"),
        (
            PermissionError(13, "Permission denied", "/out"),
            1,
            "epic-fhir pull: Permission denied: /out",
        ),
    ],
)
def test_failures_become_one_line_and_an_exit_status(
    exc: BaseException, status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _handled(exc, "pull") == status
    assert capsys.readouterr().err.strip() == message


@pytest.mark.parametrize("exc", [RuntimeError("unexpected"), SystemExit(0), _Group(ValueError("unexpected"))])
def test_unexpected_errors_and_argparse_exits_propagate(exc: BaseException) -> None:
    assert _handled(exc, "pull") is None


def test_connection_refused_names_the_url_and_says_it_is_not_reachable() -> None:
    url = "https://fhir.example.test/api/FHIR/R4/.well-known/smart-configuration"
    refused = ConnectionRefusedError(111, "Connect call failed")
    connect = httpx.ConnectError("All connection attempts failed")
    connect.__context__ = refused
    error = TransportError(f"discovery request to {url} failed: ConnectError", method="GET", url=url)
    error.__cause__ = connect
    assert describe(error) == (
        f"cannot connect to {url}: the server is not reachable (connection refused); check the URL and that "
        "the server is running"
    )


# -- logging -------------------------------------------------------------------------------------------------
def test_verbose_sends_the_sdk_records_to_stderr_for_this_run_only(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = generate_private_key

    def noisy(*args: Any, **kwargs: Any) -> Any:
        logging.getLogger("epic_fhir_async.auth").info("making a key")
        return real(*args, **kwargs)

    monkeypatch.setattr(_keys, "generate_private_key", noisy)
    logger = logging.getLogger("epic_fhir_async")
    before = (list(logger.handlers), logger.level)
    status, _, err = run("-v", "keys", "generate", "--alg", "ES256", "--out", str(tmp_path / "a"))
    assert status == 0
    assert "INFO epic_fhir_async.auth: making a key" in err
    assert (list(logger.handlers), logger.level) == before
    status, _, err = run("keys", "generate", "--alg", "ES256", "--out", str(tmp_path / "b"))
    assert "making a key" not in err


# -- argparse-level checks, help ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sandbox", "--fault-rate", "1.5"], "--fault-rate: '1.5' is not a fraction between 0 and 1"),
        (["sandbox", "--drop-rate", "-0.1"], "--drop-rate: '-0.1' is not a fraction between 0 and 1"),
        (["sandbox", "--token-flake-rate", "nan"], "--token-flake-rate: 'nan' is not a fraction"),
        (["sandbox", "--port", "70000"], "--port: '70000' is not a port number"),
        (["sandbox", "--latency-ms", "-5"], "--latency-ms: '-5' is not a number >= 0"),
        (["sandbox", "--patients", "-1"], "--patients: '-1' is not an integer >= 0"),
        (["sandbox", "--page-size", "0"], "--page-size: '0' is not a positive integer"),
        (["sandbox", "--session-ttl", "inf"], "--session-ttl: 'inf' is not a positive number"),
        (["sandbox", "--rate-limit", "ten"], "--rate-limit: 'ten' is not a number"),
        (["demo", "--patients", "0"], "--patients: '0' is not a positive integer"),
        (["demo", "--concurrency", "-2"], "--concurrency: '-2' is not a positive integer"),
        (["pull", "--base-url", "x", "--patients", "p", "--out", "o", "--concurrency", "0"], "--concurrency"),
        (["export", "--base-url", "x", "--out", "o", "--poll-interval", "0"], "--poll-interval: '0' is not"),
        (["export", "--base-url", "x", "--out", "o", "--concurrency", "1.5"], "--concurrency: '1.5' is not"),
    ],
)
def test_bad_numbers_are_usage_errors(argv: list[str], message: str, run: Run) -> None:
    status, _, err = run(*argv)
    assert status == 2
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "1", "0.25"])
def test_fractions_at_the_edges_are_accepted(value: str) -> None:
    args = build_parser().parse_args(["sandbox", "--fault-rate", value, "--drop-rate", value])
    assert args.fault_rate == args.drop_rate == float(value)


def test_top_help_documents_the_exit_codes(run: Run) -> None:
    status, out, _ = run("--help")
    assert status == 0
    assert EXIT_CODES_HELP.strip() in out
    codes = [line.split()[0] for line in EXIT_CODES_HELP.splitlines()[1:] if line[:6].strip().isdigit()]
    assert codes == ["0", "1", "2", "3", "130", "141"]
    assert max(len(line) for line in EXIT_CODES_HELP.splitlines()) <= 80


def test_keys_generate_help_lists_the_algorithms(run: Run) -> None:
    _, out, _ = run("keys", "generate", "--help")
    help_text = " ".join(out.split()[out.split().index("--alg", out.split().index("options:")) :])
    assert "signing algorithm: RS384, ES384, RS256, RS512, ES256 (default RS384" in help_text


# -- output that is not a terminal ---------------------------------------------------------------------------
def _progress(**kw: Any) -> PullProgress:
    fields: dict[str, Any] = {
        "event": "page",
        "streams_total": 10,
        "streams_done": 3,
        "streams_failed": 1,
        "streams_skipped": 0,
        "patients_seen": 2,
        "patients_done": 1,
        "pages": 4,
        "resources": 1234,
        "retries": 2,
        "elapsed": 12.0,
    }
    fields.update(kw)
    return PullProgress(**fields)


def test_progress_in_a_pipe_is_plain_lines_without_control_codes() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=60)
    assert not console.is_terminal
    with PullDisplay(console, "Pulling", plain_every=0.0) as display:
        display(_progress())
        display(_progress(event="finished"))
    text = buffer.getvalue()
    assert text == "Pulling: 4/10 streams · 1 patient · 1,234 resources · retries 2 · errors 1 · 12 s\n"

    buffer = io.StringIO()
    with PlainProgress(Console(file=buffer, width=40), every=3600.0) as progress:
        task = progress.add_task("Server: waiting")
        progress.update(task, description="Server: 10% (poll 1)")
        progress.update(task, description="Server: complete")  # within the interval: printed at the end
    assert buffer.getvalue().splitlines() == ["Server: 10% (poll 1)", "Server: complete"]
    assert "\x1b" not in buffer.getvalue()


def test_progress_on_a_terminal_is_still_the_live_bar() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with PullDisplay(console, "Pulling") as display:
        display(_progress())
    assert "\x1b" in buffer.getvalue()  # the live bar: cursor control, colours
