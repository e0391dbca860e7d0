"""What the ``epic-fhir`` commands share: exit codes, one-line errors, argument types, keys and credentials,
the first token request, and a console that behaves when the output is piped."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from .. import ConfigurationError, RequestTimeout, TokenRequestError, TransportError
from ..auth import BackendServicesAuth, EpicAuth, SigningKey, StaticTokenAuth, load_private_keys

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


class CLIError(Exception):
    """A problem the user fixes: ``main`` prints ``epic-fhir <command>: <message>`` (no traceback) and exits
    with ``status``."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


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


# -- credentials -----------------------------------------------------------------------------------------------
def add_auth_arguments(parser: argparse.ArgumentParser) -> None:
    """``--client-id``, ``--key``, ``--password-env`` and ``--token-url``, as ``pull`` and ``export`` take them."""
    parser.add_argument("--client-id", help="backend-services client id (with --key)")
    parser.add_argument("--key", type=Path, metavar="KEY.pem", help="private key of the client")
    add_password_argument(parser)
    parser.add_argument("--token-url", default=None, help="token endpoint (default: discovered)")


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
    """The private key(s) in ``path``, or a :class:`CLIError` that says what is wrong with the file."""
    password = env_password(password_env)
    if not path.exists():
        raise CLIError(f"no such key file: {path}")
    if path.is_dir():
        raise CLIError(f"--key {path} is a directory, not a private key file")
    try:
        return load_private_keys(path, password=password)
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
            message = str(exc)
        raise CLIError(message) from None


def backend_auth(args: argparse.Namespace) -> EpicAuth:
    """Backend Services auth from ``--client-id``/``--key``, else the bearer token in ``$EPIC_FHIR_ACCESS_TOKEN``."""
    if args.client_id and args.key:
        keys = load_key(args.key, args.password_env)
        try:
            return BackendServicesAuth(args.client_id, keys, token_url=args.token_url)
        except ConfigurationError as exc:  # e.g. a plain http:// token URL off loopback
            raise CLIError(str(exc)) from None
    if args.client_id or args.key:
        raise CLIError("--client-id and --key go together: give both")
    token = os.environ.get(TOKEN_ENV)
    if token:
        try:
            return StaticTokenAuth(token)
        except ConfigurationError as exc:
            raise CLIError(f"${TOKEN_ENV}: {exc}") from None
    raise CLIError(f"give --client-id and --key (or set {TOKEN_ENV})")


async def first_token(auth: EpicAuth | None) -> None:
    """Fetch the first token now, before anything is written: a wrong client id, an unregistered key or an
    unreachable server then fails once, with one message, instead of in every stream. (The token is cached,
    so the work that follows reuses it: no extra token request.)"""
    get_token = getattr(auth, "get_token", None)
    if get_token is not None:
        await get_token()


# -- messages --------------------------------------------------------------------------------------------------
def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def describe(exc: BaseException, base_url: str | None = None) -> str:
    """One line (plus Epic's hint for a refused token) saying what went wrong, without tracebacks or secrets."""
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
        return f"{exc}: the server did not answer in time"
    if isinstance(exc, (ConfigurationError, TransportError, TokenRequestError)):
        return str(exc)  # these messages already say what failed (and Epic's hint for a refused token)
    return f"{type(exc).__name__}: {exc}"


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
        for task in self._tasks:
            if task[0] != task[1]:
                self.console.print(task[0], highlight=False, soft_wrap=True)

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
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
