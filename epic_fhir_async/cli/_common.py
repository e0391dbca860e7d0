"""What the ``epic-fhir`` commands share: exit codes, one-line errors in CLI terms, argument types, the base URL,
the output directory, keys and credentials, the first token request, and a console that behaves when piped."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console

from .. import (
    ConfigurationError,
    EpicFHIRError,
    FHIRStatusError,
    PagingError,
    RateLimited,
    RequestTimeout,
    ServerError,
    TokenRequestError,
    TransportError,
    Unauthorized,
    UnexpectedContentError,
)
from ..auth import (
    BackendServicesAuth,
    EpicAuth,
    InsecureKeyFileWarning,
    SigningKey,
    StaticTokenAuth,
    load_private_keys,
)
from ..pull import check_resource_type

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TOO_SOON = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what `yes | head` reports

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    failure: a request, a stream or the server failed (the message says)
  2    usage: bad arguments, a missing file or unusable key, an output
       directory holding an interrupted pull (use --resume)
  3    export: Epic refused the kick-off, the Group was exported too recently
  130  interrupted (Ctrl-C); a pull keeps its completed streams for --resume
  141  the output pipe closed early (e.g. piped into head); nothing is printed
"""

TOKEN_ENV = "EPIC_FHIR_ACCESS_TOKEN"

ENVIRONMENT_HELP = f"""\
environment:
  {TOKEN_ENV}  a bearer token for pull and export, used when
                          --client-id and --key are not given
  XDG_STATE_HOME          where `export list` keeps the exports started here
                          and not finished (default ~/.local/state)
"""

#: Free space an export's output directory needs at the least before the kick-off (a full disk would fail
#: after the job started on the server, holding Epic's one export slot per client and Group).
MIN_FREE_BYTES = 1 << 20


@dataclass
class RunContext:
    """What ``main`` knows about this run and messages need: the command's name, for the ``epic-fhir
    <command>:`` prefix of warnings, and ``-v``, which shows the server's diagnostics."""

    command: str | None = None
    verbose: int = 0
    token_from_env: bool = False  # the bearer token came from $EPIC_FHIR_ACCESS_TOKEN


RUN = RunContext()


class CLIError(Exception):
    """A problem the user fixes: ``main`` prints ``epic-fhir <command>: <message>`` (no traceback) and exits
    with ``status``. Lines after the first are printed as they are (indented advice: commands to run)."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def prefix(command: str | None = None) -> str:
    """``epic-fhir <command>``: the one prefix of every message the command line prints on stderr."""
    name = command if command is not None else RUN.command
    return f"epic-fhir{f' {name}' if name else ''}"


def warn(message: str) -> None:
    """One warning line on stderr, in the same format as the errors."""
    print(f"{prefix()}: warning: {message}", file=sys.stderr, flush=True)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 patient``, ``2 patients``, ``1,297 pages``."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def command_line(*words: str | os.PathLike[str] | None) -> str:
    """A command to copy into a shell: ``epic-fhir`` and the words, quoted where needed (``None`` skipped)."""
    return " ".join(["epic-fhir", *(shlex.quote(str(w)) for w in words if w is not None)])


# -- argument types: argparse turns their ValueError/ArgumentTypeError into "invalid value" and exit 2 --------
def _number(kind: Callable[[str], Any], test: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or not test(value):  # NaN fails every comparison: refuse it explicitly
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return value

    parse.__name__ = rule  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
fraction = _number(float, lambda v: 0 <= v <= 1, "a fraction between 0 and 1")
port_number = _number(int, lambda v: 0 <= v <= 65535, "a port number (0-65535)")


# -- the server's URL ------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address: the only place plain ``http://`` may carry credentials."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_server_url(url: str | None, flag: str = "--base-url") -> str:
    """``url`` if it can receive credentials, else a :class:`CLIError` (exit 2) saying what to type instead.

    Checked before any request: without a scheme httpx would fail with ``UnsupportedProtocol``, and plain
    ``http://`` to another machine would send the signed assertion and the bearer token unencrypted.
    """
    if not url:
        raise CLIError(f"{flag} URL is required (for Epic: https://HOST/.../api/FHIR/R4)")
    if "://" not in url:
        raise CLIError(
            f"{flag} {url} has no scheme: use https://{url.lstrip('/')} (plain http:// only for a server on "
            "this machine, such as `epic-fhir sandbox`)"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise CLIError(f"{flag} {url}: use an https:// URL ({parts.scheme}:// is not HTTP)")
    if not parts.hostname:
        raise CLIError(f"{flag} {url} has no host name: use https://HOST/...")
    if scheme == "http" and not is_loopback(parts.hostname):
        raise CLIError(
            f"{flag} {url} uses plain http:// to {parts.hostname}: credentials and tokens need https://; "
            "plain http:// is allowed only for a server on this machine (127.0.0.1, localhost)"
        )
    return url


# -- the output directory --------------------------------------------------------------------------------------
def check_out_dir(out: Path, *, create: bool = False) -> None:
    """Refuse an ``--out`` that cannot take the files, before any request (:class:`CLIError`, exit 2).

    ``out`` must be a directory, or a path that can become one; with ``create`` it is made and a probe file
    written and removed (a read-only or full file system shows up here, not after the server started work).
    Runs in a worker thread: it touches the disk.
    """
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a directory: give a directory (it is created if missing)")
    ancestor = out
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise CLIError(f"--out {out}: {ancestor} is a file, not a directory")
    if not create:
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise CLIError(f"--out {out}: {ancestor} is not writable; choose another directory")
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".epic-fhir-write-test-{os.getpid()}"
        try:
            with probe.open("wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise CLIError(
            f"--out {out} is not writable: {exc.strerror or exc}; choose another directory"
        ) from None
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise CLIError(
            f"--out {out}: only {free:,} bytes free on its disk; free some space or choose another"
        )


# -- resource types --------------------------------------------------------------------------------------------
def check_types(values: Iterable[str] | None, flag: str = "--types") -> None:
    """Every type (or the type of every query template, ``Observation?category=...``) is a FHIR R4 type;
    else a :class:`CLIError` with the nearest names. Epic answers an unknown type with an IIS 404 page."""
    for value in values or ():
        name = value.partition("?")[0]
        try:
            check_resource_type(name)
        except ConfigurationError as exc:
            raise CLIError(f"{flag}: {advice(str(exc))}") from None


# -- credentials -----------------------------------------------------------------------------------------------
def add_auth_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--client-id``, ``--key``, ``--password-env`` and ``--token-url``, as ``pull`` and ``export`` take them."""
    parser.add_argument(
        "--client-id", help=f"backend-services client id (with --key; or set {TOKEN_ENV} to a bearer token)"
    )
    parser.add_argument("--key", type=Path, metavar="KEY.pem", help="private key of the client")
    add_password_argument(parser)
    parser.add_argument(
        "--token-url", default=None, help="token endpoint (default: discovered from --base-url)"
    )


def add_password_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-env",
        metavar="VAR",
        default=None,
        help="environment variable holding the password of an encrypted key (never put it on the command line)",
    )


def env_password(var: str | None) -> str | None:
    """The key password from ``$var``; the message names the variable, never its value."""
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise CLIError(f"--password-env {var}: the environment variable {var} is not set or empty")
    return value


def load_key(path: Path, password_env: str | None) -> list[SigningKey]:
    """The private key(s) in ``path``, or a :class:`CLIError` that says what is wrong with the file.

    A key file others can read gets one warning line, and only once the file proved to be a private key
    (a garbage or public file gets the error alone, not Python's warning output first).
    """
    password = env_password(password_env)
    if not path.exists():
        raise CLIError(f"no such key file: {path}")
    if path.is_dir():
        raise CLIError(f"--key {path} is a directory, not a private key file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InsecureKeyFileWarning)
            keys = load_private_keys(path, password=password)
    except ConfigurationError as exc:
        try:
            encrypted = b"ENCRYPTED" in path.read_bytes()
        except OSError:
            encrypted = False
        if encrypted and password is None:
            message = f"key file {path} is encrypted: name the variable holding its password with --password-env VAR"
        elif encrypted:
            message = f"wrong password for key file {path} (taken from ${password_env})"
        elif password is not None:
            message = f"key file {path} is not encrypted: drop --password-env"
        elif "could not be read" in str(exc):
            message = f"{path} is not a private key (expected an RSA or EC private key: PEM, DER or JWK)"
        else:
            message = advice(str(exc))
        raise CLIError(message) from None
    if any(issubclass(w.category, InsecureKeyFileWarning) for w in caught):
        mode = path.stat().st_mode & 0o777
        warn(
            f"key file {path} can be read by other users (mode {mode:03o}); run: chmod 600 {shlex.quote(str(path))}"
        )
    return keys


def backend_auth(args: argparse.Namespace) -> EpicAuth:
    """Backend Services auth from ``--client-id``/``--key``, else the bearer token in ``$EPIC_FHIR_ACCESS_TOKEN``."""
    if args.token_url:
        check_server_url(args.token_url, "--token-url")
    if args.client_id and args.key:
        keys = load_key(args.key, args.password_env)
        try:
            return BackendServicesAuth(args.client_id, keys, token_url=args.token_url)
        except ConfigurationError as exc:
            raise CLIError(advice(str(exc))) from None
    if args.client_id or args.key:
        raise CLIError("--client-id and --key go together: give both")
    token = os.environ.get(TOKEN_ENV)
    if token:
        RUN.token_from_env = True
        try:
            return StaticTokenAuth(token)
        except ConfigurationError as exc:
            raise CLIError(f"${TOKEN_ENV}: {advice(str(exc))}") from None
    raise CLIError(f"give --client-id and --key (or set {TOKEN_ENV} to a bearer token)")


async def first_token(auth: EpicAuth | None) -> None:
    """Fetch the first token now, before anything is written: a wrong client id, an unregistered key or an
    unreachable server then fails once, with one message, instead of in every stream. (The token is cached,
    so the work that follows reuses it: no extra token request.)"""
    get_token = getattr(auth, "get_token", None)
    if get_token is not None:
        await get_token()


# -- messages --------------------------------------------------------------------------------------------------
#: The library's advice is for Python callers; on the command line the same fix is a flag or a command.
_PYTHON_ADVICE: tuple[tuple[str, str], ...] = (
    (
        "; pass token_url= explicitly",
        ": is --base-url the FHIR R4 base (for Epic it ends in /api/FHIR/R4)? Or give the token endpoint "
        "with --token-url",
    ),
    (
        "; pass the type and the id separately (read('Patient', id)), not a reference or URL",
        "; give the bare id (what follows 'Patient/'), not a reference or URL",
    ),
    ("; to search, use client.search(type, **params)", "; give the bare id, without search parameters"),
    (" (loopback is allowed; pass your own http_client to override)", " (use https://)"),
    ("cancel it with job.cancel()", "cancel it with `epic-fhir export cancel STATUS_URL`"),
    ("; pass the type alone (e.g. 'Patient'), with ids and search parameters separately", ""),
    ("pass it to BackendServicesAuth", "pass it with --key"),
    ("key_id=", "the key id "),
)
#: What the library puts in a message instead of an issue's diagnostics (they may name a patient).
_WITHHELD = " (diagnostics withheld: see .issues)"
_WRONG_BASE = " (is --base-url the FHIR R4 base? For Epic it ends in /api/FHIR/R4)"


def advice(message: str) -> str:
    """``message`` with the library's Python advice replaced by the command line's flags and commands."""
    for python, cli in _PYTHON_ADVICE:
        message = message.replace(python, cli)
    return message


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def diagnostics(exc: BaseException) -> list[str]:
    """The ``diagnostics`` of the OperationOutcome issues behind ``exc`` (free text from the server)."""
    for e in _chain(exc):
        outcome = getattr(e, "operation_outcome", None)
        if outcome is not None:
            return [" ".join(i.diagnostics.split()) for i in outcome.issues if i.diagnostics]
    return []


def retry_may_help(exc: BaseException) -> bool:
    """Whether running the same request again may succeed: connection trouble, timeouts, 429, 5xx, an expired
    paging session. A 400, 403 or 404 fails again until something is changed, so no retry is suggested."""
    for e in _chain(exc):
        if isinstance(e, (TransportError, RequestTimeout, RateLimited, ServerError, PagingError)):
            return True
        if isinstance(e, (FHIRStatusError, UnexpectedContentError, ConfigurationError, TokenRequestError)):
            return False
    return False


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exception itself, or every exception inside an (anyio task group's) exception group.

    Duck-typed on ``.exceptions``: no ``exceptiongroup`` import on 3.10.
    """
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple):
        for e in inner:
            if isinstance(e, BaseException):
                yield from leaves(e)
    else:
        yield exc


def failure_in(exc: BaseException) -> Exception | None:
    """The SDK error or ``OSError`` that ended a run, found inside exception groups too; ``None`` when the run
    was interrupted (Ctrl-C, a closed output pipe) or failed otherwise (a bug: it keeps its traceback)."""
    found = list(leaves(exc))
    if any(isinstance(e, (KeyboardInterrupt, BrokenPipeError)) for e in found):
        return None
    return next((e for e in found if isinstance(e, (EpicFHIRError, OSError))), None)


def describe(exc: BaseException, base_url: str | None = None) -> str:
    """What went wrong, in the command line's terms: one line (Epic's hint for a refused token may add some),
    then, with ``-v``, the server's diagnostics on lines of their own. Never a traceback or a secret."""
    chain = _chain(exc)
    connect = next((e for e in chain if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout))), None)
    if connect is not None:
        failed = next((e.url for e in chain if isinstance(e, TransportError) and e.url), None) or base_url
        where = str(failed) if failed else "the server"  # TransportError.url is redacted already
        if isinstance(connect, httpx.ConnectTimeout):
            reason = "connection timed out"
        elif any(isinstance(e, ConnectionRefusedError) for e in chain):
            reason = "connection refused"
        else:
            reason = str(connect) or type(connect).__name__
        return (
            f"cannot connect to {where}: the server is not reachable ({reason}); check the URL and that "
            "the server is running"
        )
    if isinstance(exc, RequestTimeout):
        text = f"{exc}: the server did not answer in time"
    elif isinstance(exc, EpicFHIRError):
        text = str(exc)  # the SDK's messages say what failed (and Epic's hint for a refused token)
    elif isinstance(exc, OSError) and exc.strerror:  # disk full, permission denied: the OS says it best
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = advice(text).replace("\n", "\n  ")  # Epic's hint, on its own line: indented like all advice
    if RUN.token_from_env and any(isinstance(e, Unauthorized) for e in chain):
        text += f" (the token in ${TOKEN_ENV}: get a new one)"
    if any(isinstance(e, UnexpectedContentError) and e.status_code == 404 for e in chain):
        text += _WRONG_BASE
    notes = diagnostics(exc)
    text = text.replace(_WITHHELD, "")
    if notes and RUN.verbose:
        text += "".join(f"\n  diagnostics: {note}" for note in notes)
    elif notes:
        text += " (the server sent diagnostics, hidden as they may name a patient: add -v to show them)"
    return text


# -- console ---------------------------------------------------------------------------------------------------
class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich's default raises SystemExit(1), which a task group would wrap; a BrokenPipeError is recognised
        # by main() wherever it surfaces, and turned into a quiet exit.
        self.quiet = True
        raise BrokenPipeError


def make_console() -> Console:
    """A rich console for stdout. Piped or redirected (not a terminal), rich already drops colours and
    cursor codes; long lines are then not wrapped either, so a log file or ``grep`` sees whole lines."""
    console = _Console()
    console.soft_wrap = not console.is_terminal
    return console


def silence_stdout() -> None:
    """After a broken pipe: point stdout at devnull so the interpreter's final flush does not fail again
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class PlainProgress:
    """What ``export`` uses of rich's ``Progress`` (``add_task``, ``update``), for a console that is not a
    terminal: a task's description is printed as a plain line when it changed, at most every ``every``
    seconds, and once more at the end; no bar, no cursor movement."""

    def __init__(self, console: Console, *, every: float = 10.0) -> None:
        self.console = console
        self.every = every
        self._tasks: list[list[Any]] = []  # [description, printed description, next print time]

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._flush()

    def _flush(self) -> None:
        """Print what changed since it was last printed (the lines stay in the order things happened)."""
        for task in self._tasks:
            if task[0] != task[1]:
                self.console.print(task[0], highlight=False, soft_wrap=True)
                task[1] = task[0]

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        self._flush()  # the earlier steps' last state first: "Server: complete" before "Files 0/8"
        self._tasks.append([description, None, 0.0])
        return len(self._tasks) - 1

    def update(self, task_id: int, *, description: str | None = None, **fields: Any) -> None:
        task = self._tasks[task_id]
        if description is None:
            return
        task[0] = description
        now = time.monotonic()
        if description != task[1] and now >= task[2]:
            self.console.print(description, highlight=False, soft_wrap=True)
            task[1], task[2] = description, now + self.every
