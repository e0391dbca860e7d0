"""Two ways to drive the command line.

In-process: a sandbox the ``pull`` and ``export`` commands reach through their ``_client`` seam, a registered
key on disk (and an encrypted copy of it), and ``run``, which calls ``main`` and returns (status, stdout, stderr).

As a person does: :class:`ServedSandbox` starts ``epic-fhir sandbox`` (a subprocess on 127.0.0.1, port 0) with
the session's key registered, and :class:`Shell` runs the real ``epic-fhir`` command in a subprocess against
it, in its own working directory and state directory (``XDG_STATE_HOME``), returning a :class:`Result`.
Every test also gets a private ``XDG_STATE_HOME`` in-process (the export list must never be the user's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from epic_fhir_async import EpicFHIRClient
from epic_fhir_async.cli import _export as cli_export
from epic_fhir_async.cli import _pull as cli_pull
from epic_fhir_async.cli._main import main
from epic_fhir_async.sandbox import EpicSandbox, SandboxConfig

from ..conftest import fast_sdk_retries

CLIENT_ID = "cli-client"


@dataclass
class CLISandbox:
    sandbox: EpicSandbox
    key: Path
    patients: list[str]
    auth: list[str] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.sandbox.stats)


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_reaches_the_commands() -> Iterator[None]:
    """The tests press Ctrl-C (SIGINT) in the ``epic-fhir`` processes they start. A test run started in the
    background of a non-interactive shell (``cmd &``, ``nohup``) has SIGINT ignored; every child inherits that,
    and Python then installs no KeyboardInterrupt handler, so the commands would rightly ignore Ctrl-C. An
    ignored disposition survives ``exec`` and a handler does not: with Python's own handler installed here, the
    children start with the default, as from a terminal."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CLISandbox:
    sb = EpicSandbox(SandboxConfig(seed=3, patients=4, export_seconds=0.0))
    # The key pair as a user makes it: `epic-fhir keys generate` (EC: quick, RSA takes most of a second).
    assert main(["keys", "generate", "--alg", "ES384", "--out", str(tmp_path / "keys")]) == 0
    sb.register_client(CLIENT_ID, json.loads((tmp_path / "keys" / "jwks.json").read_text()))
    pem = tmp_path / "keys" / "private_key.pem"

    def client(args: Any, auth: Any) -> EpicFHIRClient:
        return EpicFHIRClient(args.base_url, auth=auth, transport=sb.transport())

    monkeypatch.setattr(cli_pull, "_client", client)
    monkeypatch.setattr(cli_export, "_client", client)
    fast_sdk_retries(monkeypatch, 0.0)  # a refused token is retried once: at once here
    auth = [
        "--base-url",
        sb.base_url,
        "--client-id",
        CLIENT_ID,
        "--key",
        str(pem),
        "--token-url",
        sb.token_url,
    ]
    return CLISandbox(sb, pem, list(sb.dataset.patient_ids[:3]), auth)


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """``run(*argv)``: ``main(argv)`` with what it printed; argparse's own exits give their status too."""

    def call(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return status, out, err

    return call


@pytest.fixture
def encrypted_key(cli: CLISandbox, tmp_path: Path) -> Path:
    """The registered key, encrypted with the password "correct horse"."""
    native = serialization.load_pem_private_key(cli.key.read_bytes(), password=None)
    path = tmp_path / "encrypted.pem"
    path.write_bytes(
        native.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        )
    )
    path.chmod(0o600)
    return path


# -- the real command in a subprocess ------------------------------------------------------------------------
SERVED_CLIENT = "cli-served"
#: What a careless user types: none of it may ever end in a traceback.
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(autouse=True)
def private_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The export list of in-process runs goes to the test's directory, never the user's."""
    path = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(path))
    return path


def epic_fhir_command() -> list[str]:
    """The installed ``epic-fhir`` script, as a person runs it."""
    script = shutil.which("epic-fhir", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script]
    return [sys.executable, "-c", "import sys; from epic_fhir_async.cli import main; sys.exit(main())"]


@dataclass
class Result:
    status: int
    out: str
    err: str

    def __str__(self) -> str:  # what a failed assertion shows
        return f"exit {self.status}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@dataclass
class KeyPair:
    dir: Path
    private: Path
    jwks: Path


@pytest.fixture(scope="session")
def served_key(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """One key pair for every served sandbox, made as a user makes it (``epic-fhir keys generate``)."""
    out = tmp_path_factory.mktemp("served-key")
    done = subprocess.run(
        [*epic_fhir_command(), "keys", "generate", "--alg", "ES384", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return KeyPair(out, out / "private_key.pem", out / "jwks.json")


class ServedSandbox:
    """``epic-fhir sandbox`` as a server process; its banner and its stderr (the refusal log) are kept."""

    def __init__(self, key: KeyPair, *flags: str, quick_exports: bool = True) -> None:
        argv = [*epic_fhir_command(), "sandbox", "--port", "0", "--patients", "4"]
        if quick_exports:  # exports complete at once (off: the sandbox's own default, or --epic-bulk's)
            argv += ["--export-seconds", "0"]
        argv += ["--client", f"{SERVED_CLIENT}={key.jwks}", *flags]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8"
        )
        self.banner: list[str] = []
        self._err: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        for line in self.proc.stdout:
            self.banner.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                break
        else:
            self.proc.wait(10)
            pytest.fail(f"the sandbox exited early: {self.proc.stderr.read()}")
        # Drained in the background: a full pipe would block the server.
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, []), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.fields = {k.strip(): v.strip() for k, sep, v in (ln.partition(":") for ln in self.banner) if sep}
        self.base_url = self.fields["FHIR base URL"]
        self.token_url = self.fields["Token URL"]
        self.origin = self.base_url.split("/interconnect-fhir-oauth")[0]
        self.key = key
        self.auth = ["--base-url", self.base_url, "--client-id", SERVED_CLIENT, "--key", str(key.private)]

    @staticmethod
    def _drain(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    @property
    def log(self) -> str:
        """What the server printed on stderr so far."""
        return "".join(self._err)

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.origin}/__sandbox/stats", timeout=10).json())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def served(served_key: KeyPair) -> Iterator[ServedSandbox]:
    """A served sandbox of its own per test: exports hold a slot per client and Group, as at Epic."""
    sandbox = ServedSandbox(served_key)
    try:
        yield sandbox
    finally:
        sandbox.stop()


#: The subprocess's network guard (the suite's own guard only covers this process): a ``sitecustomize`` that
#: refuses to resolve any name but loopback and writes each name it refused to ``$EPIC_FHIR_TEST_NETLOG``.
_GUARD = """
import os, socket

_real = socket.getaddrinfo
_LOOPBACK = {"127.0.0.1", "::1", "localhost", b"127.0.0.1", b"localhost"}


def getaddrinfo(host, *args, **kwargs):
    if host is not None and host not in _LOOPBACK:
        with open(os.environ["EPIC_FHIR_TEST_NETLOG"], "a", encoding="utf-8") as log:
            log.write(f"{host if isinstance(host, str) else host.decode()}\\n")
        raise socket.gaierror(socket.EAI_NONAME, "refused by the test's network guard")
    return _real(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
"""


class Shell:
    """Runs ``epic-fhir ...`` in a subprocess, in ``cwd``, with its own ``XDG_STATE_HOME``; the names it tried
    to resolve beyond loopback are in :attr:`network` (refused: no test reaches the network)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.state = cwd / "state"
        guard = cwd.parent / "network-guard"
        guard.mkdir(exist_ok=True)
        (guard / "sitecustomize.py").write_text(_GUARD, encoding="utf-8")
        self.netlog = cwd.parent / "network.log"
        python_path = os.pathsep.join(p for p in (str(guard), os.environ.get("PYTHONPATH")) if p)
        self.env = {
            **os.environ,
            "XDG_STATE_HOME": str(self.state),
            "COLUMNS": "200",  # piped output is not wrapped anyway; keeps rich's tables on one line each
            "NO_COLOR": "1",
            "PYTHONPATH": python_path,
            "EPIC_FHIR_TEST_NETLOG": str(self.netlog),
        }
        self.env.pop(TOKEN_ENV_NAME, None)

    @property
    def network(self) -> list[str]:
        """Every host name beyond loopback the commands tried to resolve."""
        return self.netlog.read_text(encoding="utf-8").split() if self.netlog.exists() else []

    def __call__(self, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        done = subprocess.run(
            [*epic_fhir_command(), *map(str, args)],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
        )
        return Result(done.returncode, done.stdout, done.stderr)


TOKEN_ENV_NAME = "EPIC_FHIR_ACCESS_TOKEN"


@pytest.fixture
def shell(tmp_path: Path) -> Shell:
    work = tmp_path / "work"
    work.mkdir()
    return Shell(work)
