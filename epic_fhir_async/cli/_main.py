"""Entry point and sub-command registry of ``epic-fhir``.

Each sub-command lives in its own module ``cli/_<name>.py`` exposing ``register(subparsers)``; the module
registers its parser and sets ``func`` (an ``async`` or plain callable taking the parsed namespace and
returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Sequence

import anyio

from .._version import __version__

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("demo", "sandbox", "pull", "export", "keys", "token")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epic-fhir",
        description="Pull data from Epic's FHIR R4 API, or run the embedded Epic sandbox emulator.",
    )
    parser.add_argument("--version", action="version", version=f"epic-fhir {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__package__}._{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != f"{__package__}._{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        result = anyio.run(func, args) if inspect.iscoroutinefunction(func) else func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
