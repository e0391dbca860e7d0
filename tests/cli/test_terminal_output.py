"""What a person sees: ``epic-fhir pull``, ``export`` and ``demo`` in a real terminal (tmux, read back with
``capture-pane``) and piped (a subprocess whose stdout is a pipe), against ``epic-fhir sandbox`` on 127.0.0.1.

On a terminal: the live bar's last frame with the final counts, the summary, counts in words that agree
("1 patient", "2 files (1 output, 1 error)" then "Files 2/2"). Piped: plain lines only (no escape codes), a
first progress line at once instead of blank lines where a bar would be, the same summary.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._processes import missing
from tests.cli.conftest import ServedSandbox, Shell, epic_fhir_command

CAMILA = "erXuFYUfucBZaryVksYEcMg3"


class Tmux:
    """A tmux server of this test only (its own socket), running one command per window."""

    def __init__(self, tmp_path: Path, width: int = 140, height: int = 60) -> None:
        self.socket = tmp_path / "tmux.sock"
        self.tmp = tmp_path
        self.size = (str(width), str(height))
        self.windows = 0

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def run(self, shell: Shell, *argv: str | Path, timeout: float = 120) -> tuple[int, str]:
        """Run ``epic-fhir argv`` in a fresh window of a real terminal; its exit status and the screen."""
        self.windows += 1
        name = f"w{self.windows}"
        exports = "".join(
            f"export {k}={shlex.quote(v)}\n"
            for k, v in shell.env.items()
            if k in ("XDG_STATE_HOME", "PYTHONPATH", "EPIC_FHIR_TEST_NETLOG", "PATH", "HOME")
        )
        command = shlex.join([*epic_fhir_command(), *map(str, argv)])
        script = self.tmp / f"{name}.sh"
        script.write_text(
            f"cd {shlex.quote(str(shell.cwd))}\n{exports}unset NO_COLOR COLUMNS\n{command}\n"
            'echo "EXIT=$?"\nsleep 600\n'
        )
        if self.windows == 1:
            self._tmux(
                "new-session", "-d", "-s", "t", "-x", self.size[0], "-y", self.size[1], f"bash {script}"
            )
        else:
            self._tmux("new-window", "-t", "t", "-n", name, f"bash {script}")
        target = f"t:{self.windows - 1}"
        deadline = time.monotonic() + timeout
        while True:
            screen = self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", target)
            found = re.search(r"^EXIT=(\d+)$", screen, re.MULTILINE)
            if found is not None:
                return int(found[1]), screen[: found.start()]
            assert time.monotonic() < deadline, screen
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        missing("tmux is not installed (Debian: apt-get install tmux; .ci/run installs it)")
    terminal = Tmux(tmp_path)
    try:
        yield terminal
    finally:
        terminal.close()


def facts(text: str) -> str:
    found = re.search(r"^\d+ patients? · .*$", text, re.MULTILINE)
    assert found is not None, text
    return found[0]


def test_pull_on_a_terminal_and_piped(tmux: Tmux, served: ServedSandbox, shell: Shell) -> None:
    argv = ["pull", *served.auth, "--patients", CAMILA, "--types", "Patient", "Condition", "Observation"]
    status, screen = tmux.run(shell, *argv, "--out", "tty")
    assert status == 0, screen
    # The bar's last frame: 5 streams (Observation is one search per category), all done, one patient.
    assert re.search(
        r"Pulling ━+ 5/5 1 patient [\d,]+ res [\d,]+/s retries 0 errors 0 \d:\d\d:\d\d", screen
    ), screen
    assert "Pulled into tty" in screen
    assert re.search(r"│ Observation\s+│\s+[\d,]+ │ Observation\.ndjson", screen), screen
    line = facts(screen)
    assert line.startswith("1 patient · 5 of 5 streams done · 5 pages · ")
    assert "patients" not in line

    piped = shell(*argv, "--out", "piped")
    assert piped.status == 0, str(piped)
    assert "\x1b" not in piped.out
    assert (
        piped.out.splitlines()[0]
        == "Pulling: 0/5 streams · 0 patients · 0 resources · retries 0 · errors 0 · 0 s"
    )
    assert "Pulled into piped" in piped.out
    piped_facts = facts(piped.out)
    assert piped_facts.split(" in ")[0] == line.split(" in ")[0]  # the same counts either way


def test_export_on_a_terminal_and_piped(tmux: Tmux, served: ServedSandbox, shell: Shell) -> None:
    argv = ["export", *served.auth, "--types", "Patient", "--poll-interval", "0.1"]
    status, screen = tmux.run(shell, *argv, "--out", "tty")
    assert status == 0, screen
    assert "Server: complete, 2 files (1 output, 1 error)" in screen
    assert re.search(r"Files 2/2 · [\d.]+ KB · \d+ resources", screen), screen
    assert "1 OperationOutcome in 1 error file" in screen
    assert "(s)" not in screen

    piped = shell(*argv, "--out", "piped")
    assert piped.status == 0, str(piped)
    assert "\x1b" not in piped.out
    lines = piped.out.splitlines()
    assert lines[0].startswith("Status URL: ")
    server = lines.index("Server: complete, 2 files (1 output, 1 error)")
    files = [i for i, line in enumerate(lines) if line.startswith("Files ")]
    assert files, piped.out
    assert server < files[0]  # the server's last word comes before the download's lines
    assert re.fullmatch(r"Files 2/2 · [\d.]+ KB · \d+ resources", lines[files[-1]])


def test_demo_piped_prints_progress_lines_not_blank_lines(tmux: Tmux, shell: Shell) -> None:
    piped = shell("demo", "--patients", "2", "--out", "demo")
    assert piped.status == 0, str(piped)
    assert "\x1b" not in piped.out
    assert "\n\n\n" not in piped.out
    lines = piped.out.splitlines()
    pulling = next(i for i, line in enumerate(lines) if line.startswith("  pulling "))
    assert lines[pulling + 1].startswith("Pulling: 0/"), piped.out
    assert lines[pulling + 1].endswith(" · 0 s")

    status, screen = tmux.run(shell, "demo", "--patients", "2", "--out", "tty-demo")
    assert status == 0, screen
    assert re.search(r"Pulling ━+ (\d+)/\1 10 patients ", screen), screen
    assert "Next steps" in screen
