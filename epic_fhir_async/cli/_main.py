"""Entry point and sub-command registry of ``epic-fhir``.

Each sub-command lives in its own module ``cli/_<name>.py`` exposing ``register(subparsers)``; the module
registers its parser and sets ``func`` (an ``async`` or plain callable taking the parsed namespace and
returning an exit code).

``main`` is also where the user-facing failure modes end: a :class:`CLIError` or any ``OSError`` becomes one
line on stderr (``epic-fhir <command>: <message>``, the one format of every message; advice follows on
indented lines), Ctrl-C exits 130 and a closed output pipe 141, quietly; they are found inside the exception
groups anyio's task groups wrap them in, too. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
from collections.abc import Iterator, Sequence

import anyio

from .. import __version__
from ._common import (
    ENVIRONMENT_HELP,
    EXIT_BROKEN_PIPE,
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RUN,
    CLIError,
    prefix,
    silence_stdout,
)

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("demo", "sandbox", "pull", "export", "keys", "token", "directory")

#: The library's logger (every module logs below it): -v shows its records on stderr.
_LIBRARY_LOGGER = "epic_fhir_async"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epic-fhir",
        description="Pull data from Epic's FHIR R4 API, or run the embedded Epic sandbox emulator.",
        epilog=EXIT_CODES_HELP + "\n" + ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"epic-fhir {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help=_VERBOSE_HELP,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__package__}._{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != f"{__package__}._{name}":
                raise
            continue
        module.register(sub)
    _add_verbose(sub)
    return parser


_VERBOSE_HELP = (
    "show the server's diagnostics in error messages (they may name a patient) and log the SDK's warnings "
    "and retries to stderr (-vv: debug)"
)


def _add_verbose(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``-v`` after the command too (``epic-fhir pull ... -v``), where a message that says "add -v" puts it."""
    for parser in set(subparsers.choices.values()):
        if not any("-v" in action.option_strings for action in parser._actions):
            parser.add_argument(
                "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=_VERBOSE_HELP
            )
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_verbose(action)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exception itself, or every exception inside an (anyio task group's) exception group.

    Duck-typed on ``.exceptions`` (as ``_bulk_stream.unwrap_group``): no ``exceptiongroup`` import on 3.10.
    """
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple):
        for e in inner:
            if isinstance(e, BaseException):
                yield from _leaves(e)
    else:
        yield exc


def _say(command: str | None, message: str) -> None:
    print(f"{prefix(command)}: {message}", file=sys.stderr)


def _handled(exc: BaseException, command: str | None) -> int | None:
    """The exit status for an exception the user should see as one line, or ``None`` to let it propagate."""
    leaves = list(_leaves(exc))
    if any(isinstance(e, KeyboardInterrupt) for e in leaves):
        _say(command, "interrupted")
        return EXIT_INTERRUPTED
    if any(isinstance(e, BrokenPipeError) for e in leaves):
        silence_stdout()
        return EXIT_BROKEN_PIPE
    for e in leaves:
        if isinstance(e, CLIError):
            _say(command, e.message)
            return e.status
    for e in leaves:
        if isinstance(e, SystemExit) and isinstance(e.code, str):  # a command's usage message
            _say(command, e.code)
            return EXIT_USAGE
    if isinstance(exc, SystemExit):  # argparse (--help, a usage error): its own message and status
        return None
    for e in leaves:
        if isinstance(e, OSError):  # disk full, permission denied, ...: the OS says it best
            _say(command, f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
            return EXIT_FAILURE
    return None


def _verbose(level: int) -> logging.Handler | None:
    """With -v, the SDK's log records (warnings, retries) go to stderr; the library itself only has a
    NullHandler, so without it they are dropped."""
    if not level:
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if level > 1 else logging.INFO)
    logger = logging.getLogger(_LIBRARY_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), handler.level))
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    command: str | None = None
    handler: logging.Handler | None = None
    level = logging.getLogger(_LIBRARY_LOGGER).level
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = getattr(args, "cli_name", None) or args.command
        RUN.command, RUN.verbose = command, args.verbose
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        handler = _verbose(args.verbose)
        result = anyio.run(func, args) if inspect.iscoroutinefunction(func) else func(args)
        sys.stdout.flush()  # inside the try: a reader that went away shows up here for buffered output
        return int(result or 0)
    except BaseException as exc:
        if isinstance(exc, SystemExit) and not isinstance(exc.code, str):
            try:  # --help or --version into a closed pipe
                sys.stdout.flush()
            except BrokenPipeError:
                silence_stdout()
                return EXIT_BROKEN_PIPE
        status = _handled(exc, command)
        if status is None:
            raise
        return status
    finally:
        RUN.command, RUN.verbose, RUN.token_from_env = None, 0, False
        if handler is not None:
            logging.getLogger(_LIBRARY_LOGGER).removeHandler(handler)
            logging.getLogger(_LIBRARY_LOGGER).setLevel(level)
