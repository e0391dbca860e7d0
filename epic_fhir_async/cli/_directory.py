"""``epic-fhir directory NAME``: an organisation's FHIR R4 base URL from Epic's endpoint directory.

Downloads Epic's directory (or reads a saved file), keeps it under ``$XDG_CACHE_HOME/epic-fhir`` (revalidated
with its ETag once it is older than ``--max-age``), and prints the organisations whose name holds every word
given, case and accents aside: one per line, name and R4 base URL (``--json``: one JSON object per line).
Exit 0 with matches, 1 without.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .. import ConfigurationError, EpicFHIRError
from ..directory import EPIC_BRANDS_URL, EPIC_R4_ENDPOINTS_URL, DirectoryEntry, EndpointDirectory
from ._common import EXIT_FAILURE, EXIT_OK, CLIError, non_negative_float, positive_int

__all__ = ["register", "run"]

_NAME_WIDTH = 60


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "epic-fhir"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "directory",
        help="find an organisation's FHIR R4 base URL in Epic's endpoint directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="+", metavar="NAME", help="words of the organisation's name (partial)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--url", default=None, help=f"directory to download (default {EPIC_R4_ENDPOINTS_URL})"
    )
    source.add_argument("--brands", action="store_true", help=f"use Epic's Brands bundle ({EPIC_BRANDS_URL})")
    source.add_argument("--file", type=Path, default=None, help="a directory bundle saved on disk (JSON)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where downloads are kept (default: $XDG_CACHE_HOME/epic-fhir or ~/.cache/epic-fhir)",
    )
    cache.add_argument("--no-cache", action="store_true", help="download every time, keep nothing")
    parser.add_argument(
        "--max-age", type=non_negative_float, default=24 * 3600.0, metavar="S",
        help="use a cached copy younger than this without asking the server (default: %(default)s s)",
    )  # fmt: skip
    parser.add_argument("--limit", type=positive_int, default=20, metavar="N", help="at most N matches")
    parser.add_argument("--all-versions", action="store_true", help="DSTU2 and STU3 endpoints too")
    parser.add_argument("--include-retired", action="store_true", help="retired endpoints too")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(func=run)


async def _load(args: argparse.Namespace) -> EndpointDirectory:
    if args.file is not None:
        return await EndpointDirectory.from_file(args.file)
    url = args.url or (EPIC_BRANDS_URL if args.brands else EPIC_R4_ENDPOINTS_URL)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    return await EndpointDirectory.fetch(url, cache_dir=cache_dir, max_age=args.max_age)


def _line(entry: DirectoryEntry, as_json: bool) -> str:
    if as_json:
        fields = ("name", "base_url", "fhir_version", "status", "retired", "endpoint_id", "organization_id")
        return json.dumps({f: getattr(entry, f) for f in fields}, ensure_ascii=False)
    name = entry.name or "(no name)"
    if len(name) > _NAME_WIDTH:
        name = name[: _NAME_WIDTH - 1] + "…"
    notes = [] if entry.fhir_version == "R4" else [entry.fhir_version or "version not given"]
    notes += [] if entry.status == "active" else [entry.status]
    notes += ["retired"] if entry.retired else []
    tail = f"  ({', '.join(notes)})" if notes else ""
    return f"{name:<{_NAME_WIDTH}}  {entry.base_url}{tail}"


async def run(args: argparse.Namespace) -> int:
    query = " ".join(args.name)
    try:
        directory = await _load(args)
        matches = directory.search(
            query,
            limit=args.limit,
            fhir_version=None if args.all_versions else "R4",
            include_retired=args.include_retired,
        )
    except ConfigurationError as exc:
        raise CLIError(str(exc)) from None
    except EpicFHIRError as exc:
        raise CLIError(f"could not load the endpoint directory: {exc}", EXIT_FAILURE) from None
    if not matches:
        print(
            f"no organisation matches {query!r} ({len(directory)} entries in {directory.source})",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    for entry in matches:
        print(_line(entry, args.json))
    return EXIT_OK
