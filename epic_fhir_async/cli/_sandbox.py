"""``epic-fhir sandbox``: run the Epic sandbox emulator as a real HTTP server until Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ._common import (
    EXIT_FAILURE,
    CLIError,
    fraction,
    non_negative_float,
    non_negative_int,
    port_number,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    from ..sandbox import EpicSandbox

__all__ = ["build_sandbox", "register", "run"]


#: Flags that set one ``SandboxConfig`` field: (flag, field, type or choices, metavar, help). Defaults come from
#: the config itself, so the command line and ``EpicSandbox()`` never disagree.
_CONFIG_FLAGS: tuple[tuple[str, str, Any, str | None, str], ...] = (
    ("--seed", "seed", int, "N", "dataset and fault seed"),
    ("--patients", "patients", non_negative_int, "N", "generated patients"),
    ("--token-lifetime", "token_lifetime", positive_float, "S", "expires_in of issued tokens (s)"),
    ("--environment", "environment", ("non-production", "production"), None, "which client IDs are accepted"),
    ("--root-path", "root_path", str, "PATH", "server root, e.g. /FHIRProxy (production style)"),
    ("--page-size", "page_size", positive_int, "N", "default searchset page size"),
    ("--session-ttl", "session_ttl", positive_float, "S", "paging session lifetime (s)"),
    ("--unknown-params", "unknown_params", ("ignore", "warn"), None, "warn: a 4122 outcome entry"),
    ("--fault-rate", "error_rate", fraction, "F", "fraction (0-1) of FHIR 5xx answers"),
    ("--rate-limit", "rate_limit_rps", non_negative_float, "RPS", "FHIR requests/s, then 429 (0 = no limit)"),
    ("--retry-after", "retry_after", non_negative_float, "S", "Retry-After of 429s (s)"),
    ("--drop-rate", "drop_rate", fraction, "F", "fraction (0-1) of cut responses"),
    ("--token-flake-rate", "token_flake_rate", fraction, "F", "fraction (0-1) of bare-400 token flakes"),
    ("--export-seconds", "export_seconds", non_negative_float, "S", "bulk job duration (s)"),
    ("--export-cooldown", "export_cooldown", non_negative_float, "S", "per client+Group kick-off window (s)"),
    ("--export-resources-per-file", "export_resources_per_file", positive_int, "N", "bulk file split point"),
    ("--export-retention", "export_retention", positive_float, "S", "bulk results lifetime (s)"),
    ("--export-since", "export_since", ("reject", "ignore"), None, "what _since gets (Epic: reject)"),
    (
        "--export-synthetic-observations",
        "export_synthetic_observations",
        non_negative_int,
        "N",
        "extra Observations",
    ),
)
#: On/off flags: (flag, field, value when given, help).
_SWITCHES: tuple[tuple[str, str, bool, str], ...] = (
    ("--retry-after-http-date", "retry_after_http_date", True, "send Retry-After as an HTTP-date"),
    ("--no-export-type-filter", "export_type_filter", False, "refuse _typeFilter like Epic in 2023"),
    ("--export-allow-post", "export_allow_post", True, "accept POST kick-offs"),
)
#: Repeatable ``KEY=VALUE`` / value flags: (flag, metavar, help).
_REPEATABLE: tuple[tuple[str, str, str], ...] = (
    (
        "--client",
        "ID=JWKS_FILE|JKU_URL",
        "register a backend client by public JWK Set file, or by JWK Set URL (http(s)://...) that the "
        "sandbox fetches and caches like Epic",
    ),
    (
        "--client-types",
        "ID=TYPE[,TYPE...]",
        "types a --client may use, e.g. Patient,Observation?category=laboratory",
    ),
    ("--token-audience", "URL", "extra accepted client-assertion aud (a proxy allow-list)"),
    (
        "--directory",
        "NAME=URL",
        "extra entry for the endpoint directory at /Endpoints/R4 and /Endpoints/Brands",
    ),
)


def register(subparsers: Any) -> None:
    from ..sandbox import SandboxConfig

    parser = subparsers.add_parser(
        "sandbox",
        help="run the embedded Epic sandbox emulator (FHIR R4 + OAuth 2.0) on this machine",
        description="Serve an emulator of Epic's FHIR R4 and OAuth 2.0 servers (see docs/sandbox.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=port_number, default=8765, help="port (default 8765; 0 = any free port)"
    )
    for flag, metavar, text in _REPEATABLE:
        parser.add_argument(flag, action="append", default=[], metavar=metavar, help=f"{text} (repeatable)")
    parser.add_argument("--scope-style", choices=("v1", "v2", "epic"), default="v1", help="token scope style")
    parser.add_argument(
        "--latency-ms", type=non_negative_float, default=0.0, metavar="MS", help="added latency per request"
    )
    defaults = SandboxConfig()
    for flag, name, kind, shown, text in _CONFIG_FLAGS:
        default = getattr(defaults, name)
        typed = {"choices": kind} if isinstance(kind, tuple) else {"type": kind, "metavar": shown}
        parser.add_argument(flag, default=default, help=f"{text} (default {default})", **typed)
    for flag, name, value, text in _SWITCHES:
        parser.add_argument(flag, dest=name, action="store_true" if value else "store_false", help=text)
    parser.set_defaults(func=run)


def _pairs(specs: list[str], flag: str, shape: str) -> list[tuple[str, str]]:
    pairs = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"{flag} expects {shape}, got {spec!r}")
        pairs.append((key, value))
    return pairs


def _load_clients(specs: list[str]) -> list[tuple[str, dict[str, Any] | str]]:
    """(client id, JWK Set) for files, (client id, URL) for JWK Set URLs."""
    clients: list[tuple[str, dict[str, Any] | str]] = []
    for client_id, path in _pairs(specs, "--client", "ID=JWKS_FILE or ID=JKU_URL"):
        if path.startswith(("http://", "https://")):
            clients.append((client_id, path))
            continue
        try:
            jwks = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"cannot read the JWK Set for {client_id}: {exc}") from None
        clients.append((client_id, jwks))
    return clients


def _client_types(specs: list[str], clients: list[tuple[str, Any]]) -> dict[str, list[str]]:
    known = {client_id for client_id, _ in clients}
    types: dict[str, list[str]] = {}
    for client_id, value in _pairs(specs, "--client-types", "ID=TYPE[,TYPE...]"):
        if client_id not in known:
            raise SystemExit(f"--client-types names {client_id!r}, which no --client registers")
        types.setdefault(client_id, []).extend(t.strip() for t in value.split(",") if t.strip())
    return types


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_sandbox(args: argparse.Namespace) -> EpicSandbox:
    """The sandbox the parsed flags describe, with its ``--client`` registrations (SystemExit on bad input)."""
    from ..sandbox import EpicSandbox, SandboxConfig

    clients = _load_clients(args.client)
    client_types = _client_types(args.client_types, clients)
    origin_port = args.port or 8765
    options = {name: getattr(args, flag[2:].replace("-", "_")) for flag, name, *_ in _CONFIG_FLAGS}
    options.update({name: getattr(args, name) for _, name, _, _ in _SWITCHES})
    try:
        config = SandboxConfig(
            **options,
            origin=f"http://127.0.0.1:{origin_port}",
            token_audiences=tuple(args.token_audience),
            directory=tuple(_pairs(args.directory, "--directory", "NAME=URL")),
            latency=args.latency_ms / 1000.0,
        )
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"invalid sandbox option: {exc}") from None
    sandbox = EpicSandbox(config)
    for client_id, keys in clients:
        jwks, jku = (None, keys) if isinstance(keys, str) else (keys, None)
        try:
            sandbox.register_client(
                client_id,
                jwks,
                jku=jku,
                resource_types=client_types.get(client_id),
                scope_style=args.scope_style,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"invalid JWK Set for {client_id}: {exc}") from None
    return sandbox


async def run(args: argparse.Namespace) -> int:
    if not _is_loopback(args.host):
        print(
            f"warning: serving on {args.host}, not loopback: anyone who reaches it gets test data",
            file=sys.stderr,
        )
    sandbox = build_sandbox(args)
    try:
        async with sandbox.serve(host=args.host, port=args.port) as base_url:
            _announce(args, sandbox, base_url)
            await anyio.sleep_forever()
    except OSError as exc:  # the bind: a port in use, an address not on this machine, a privileged port
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        hint = " (another sandbox? choose another --port, or --port 0 for any free one)"
        raise CLIError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror}"
            + (hint if exc.errno == errno.EADDRINUSE else ""),
            EXIT_FAILURE,
        ) from None
    return 0


def _announce(args: argparse.Namespace, sandbox: EpicSandbox, base_url: str) -> None:
    print(f"Epic sandbox emulator (seed {args.seed}, {args.patients} generated patients)")
    print(f"FHIR base URL: {base_url}")
    print(f"Token URL:     {sandbox.token_url}")
    print(f"Stats:         {sandbox.origin}/__sandbox/stats")
    print(f"Directory:     {sandbox.origin}/Endpoints/R4")
    names = ", ".join(spec.partition("=")[0] for spec in args.client) or "none (use --client ID=JWKS_FILE)"
    print(f"Clients:       {names}")
    print("Press Ctrl-C to stop.", flush=True)
