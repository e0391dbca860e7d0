"""``epic-fhir sandbox``: run the Epic sandbox emulator as a real HTTP server until Ctrl-C.

The banner says what a client needs (the URLs, the Group id, some patient ids, how to get a token); every
refused token or bearer token is then logged on stderr with its reason, which Epic's answer never gives
(``invalid_client`` and an empty 401 say nothing). ``--static-token`` makes a fixed bearer token work for
tools that cannot sign a client assertion.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ._common import (
    EXIT_FAILURE,
    TOKEN_ENV,
    CLIError,
    command_line,
    fraction,
    is_loopback,
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
#: the config itself, so the command line and ``EpicSandbox()`` never disagree; a field that ``--epic-bulk``
#: sets otherwise has no default here, so the chosen config's own applies unless the flag is given.
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
    (
        "--no-outside-records",
        "outside_records",
        False,
        "end clinical searchsets without Epic's \"Outside Record\" warnings (59204, Procedure's 59205), which "
        "Epic's sandbox sends because its clients lack those sub-types",
    ),
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
        "--static-token",
        metavar="TOKEN",
        default=None,
        help=f"also accept this bearer token, which never expires (client {STATIC_CLIENT!r}, every type): for "
        f"tools that take a fixed token, e.g. {TOKEN_ENV}",
    )
    parser.add_argument(
        "--latency-ms", type=non_negative_float, default=0.0, metavar="MS", help="added latency per request"
    )
    parser.add_argument(
        "--epic-bulk",
        action="store_true",
        help="run Bulk Data exports as Epic does: jobs take 3 hours, status polls carry neither Retry-After nor "
        "X-Progress, and a client may kick off a Group once a day (an --export-* flag given too overrides "
        "its part)",
    )
    defaults, epic_bulk = SandboxConfig(), SandboxConfig.epic_bulk()
    for flag, name, kind, shown, text in _CONFIG_FLAGS:
        default, bulk = getattr(defaults, name), getattr(epic_bulk, name)
        typed = {"choices": kind} if isinstance(kind, tuple) else {"type": kind, "metavar": shown}
        if bulk == default:
            parser.add_argument(flag, default=default, help=f"{text} (default {default})", **typed)
        else:  # unset: build_sandbox leaves it to the config --epic-bulk chooses
            parser.add_argument(
                flag, default=None, help=f"{text} (default {default}; {bulk} with --epic-bulk)", **typed
            )
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


#: The client the ``--static-token`` belongs to (registered with a throwaway key: it never signs).
STATIC_CLIENT = "sandbox-static"

#: Why the sandbox refused a token, in words (the reasons are its short codes, docs/sandbox.md).
_REASONS = {
    "unknown_client": "no client is registered with this client id: --client ID=JWKS_FILE",
    "unknown_kid": "the assertion's kid is not in the client's JWK Set: signed with another key?",
    "missing_kid": "the assertion's header has no kid",
    "bad_signature": "the signature does not verify with the client's registered key: another key?",
    "bad_aud": "the assertion's aud is not the token URL",
    "expired": "the assertion has expired: check this machine's clock",
    "exp_too_far": "the assertion's exp is more than 5 minutes ahead",
    "replayed_jti": "the assertion's jti was used before",
    "bad_alg": "the assertion's alg is not one Epic accepts (RS384, ES384, ...)",
    "malformed": "the client_assertion is not a signed JWT",
    "wrong_environment": "the client id belongs to the other environment (--environment)",
    "not_synced": "the client's keys are not synced yet",
    "client_id_mismatch": "the form's client_id is not the assertion's",
    "flake": "a simulated failure (--token-flake-rate)",
}


class _RefusalFormatter(logging.Formatter):
    """``epic-fhir sandbox: 12:00:01 token request refused: bad_aud (the assertion's aud is not ...)``."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        reason = record.args[0] if isinstance(record.args, tuple) and record.args else None
        why = _REASONS.get(str(reason)) if record.msg == "token request refused: %s" else None
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"epic-fhir sandbox: {stamp} {text}{f' ({why})' if why else ''}"


@contextlib.contextmanager
def _refusals_on_stderr() -> Iterator[None]:
    """The sandbox's refusal records (INFO) on stderr while it serves; not twice with ``-v``."""
    logger = logging.getLogger("epic_fhir_async.sandbox")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RefusalFormatter())
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def build_sandbox(args: argparse.Namespace) -> EpicSandbox:
    """The sandbox the parsed flags describe, with its ``--client`` registrations (SystemExit on bad input)."""
    from ..sandbox import EpicSandbox, SandboxConfig

    clients = _load_clients(args.client)
    client_types = _client_types(args.client_types, clients)
    origin_port = args.port or 8765
    options = {name: getattr(args, flag[2:].replace("-", "_")) for flag, name, *_ in _CONFIG_FLAGS}
    options = {name: value for name, value in options.items() if value is not None}
    options.update({name: getattr(args, name) for _, name, _, _ in _SWITCHES})
    make_config = SandboxConfig.epic_bulk if args.epic_bulk else SandboxConfig
    try:
        config = make_config(
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
    if args.static_token is not None:
        if not args.static_token.strip() or any(c.isspace() for c in args.static_token):
            raise SystemExit("--static-token must be a non-empty token without spaces")
        from ..auth import generate_private_key, public_jwks

        sandbox.register_client(STATIC_CLIENT, public_jwks(generate_private_key("ES256")))
        sandbox.oauth.accept_static_token(args.static_token, STATIC_CLIENT)
    return sandbox


async def run(args: argparse.Namespace) -> int:
    if not is_loopback(args.host):
        print(
            f"warning: serving on {args.host}, not loopback: anyone who reaches it gets test data",
            file=sys.stderr,
        )
    sandbox = build_sandbox(args)
    try:
        with _refusals_on_stderr():
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
    """What a client needs, one ``Label: value`` line each (tests read the URLs), then how to stop."""
    ids = sandbox.dataset.patient_ids
    named = max(0, len(ids) - args.patients)
    print(
        f"Epic sandbox emulator (seed {args.seed}: {named} of Epic's test patients and {args.patients} generated)"
    )
    print(f"FHIR base URL: {base_url}")
    print(f"Token URL:     {sandbox.token_url}")
    print(f"Stats:         {sandbox.origin}/__sandbox/stats")
    print(f"Directory:     {sandbox.origin}/Endpoints/R4")
    print(f"Group id:      {sandbox.dataset.group_id} (all patients; export's default --group)")
    more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
    print(f"Patient ids:   {', '.join(ids[:3])}{more}")
    names = [spec.partition("=")[0] for spec in args.client]
    print(f"Clients:       {', '.join(names) or 'none registered'}")
    if names:
        token = command_line("token", "--base-url", base_url, "--client-id", names[0], "--key", "KEY.pem")
        print(f"Get a token:   {token}  (KEY.pem: the private key of its JWK Set)")
    if args.static_token is not None:
        print(
            f"Static token:  the --static-token value is accepted as a bearer token (client {STATIC_CLIENT})"
        )
        pull = (
            command_line("pull", "--base-url", base_url, "--patients", ids[0], "--out", "DIR") if ids else ""
        )
        print(f"Use it:        {TOKEN_ENV}=TOKEN {pull}".rstrip())
    if not names and args.static_token is None:
        keys = command_line("keys", "generate", "--out", "keys")
        print(
            f"Get a token:   register a client: {keys}, then restart with --client ID=keys/jwks.json; "
            "or pass --static-token TOKEN"
        )
    print("Refused tokens are logged below with the reason (Epic's answer never says why).")
    print("Press Ctrl-C to stop.", flush=True)
