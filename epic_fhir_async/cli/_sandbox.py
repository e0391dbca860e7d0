"""``epic-fhir sandbox``: run the Epic sandbox emulator as a real HTTP server until Ctrl-C."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

import anyio

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sandbox",
        help="run the embedded Epic sandbox emulator (FHIR R4 + OAuth 2.0) on this machine",
        description="Serve an emulator of Epic's FHIR R4 and OAuth 2.0 servers (see docs/sandbox.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID=JWKS_FILE",
        help="register a backend client with its public JWK Set file (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset and fault seed (default 0)")
    parser.add_argument("--patients", type=int, default=100, help="generated patients (default 100)")
    parser.add_argument(
        "--token-lifetime", type=float, default=3600.0, metavar="S", help="expires_in seconds"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, metavar="MS", help="added latency per request"
    )
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, metavar="F", help="fraction of FHIR 5xx answers"
    )
    parser.add_argument(
        "--rate-limit", type=float, default=0.0, metavar="RPS", help="FHIR requests/s, then 429"
    )
    parser.add_argument("--drop-rate", type=float, default=0.0, metavar="F", help="fraction of cut responses")
    parser.add_argument(
        "--token-flake-rate", type=float, default=0.0, metavar="F", help="bare-400 token flakes"
    )
    parser.add_argument("--export-seconds", type=float, default=2.0, metavar="S", help="bulk job duration")
    parser.set_defaults(func=run)


def _load_clients(specs: list[str]) -> list[tuple[str, dict[str, Any]]]:
    clients = []
    for spec in specs:
        client_id, sep, path = spec.partition("=")
        if not sep or not client_id or not path:
            raise SystemExit(f"--client expects ID=JWKS_FILE, got {spec!r}")
        try:
            jwks = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"cannot read the JWK Set for {client_id}: {exc}") from None
        clients.append((client_id, jwks))
    return clients


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run(args: argparse.Namespace) -> int:
    from ..sandbox import EpicSandbox, SandboxConfig

    if not _is_loopback(args.host):
        print(
            f"warning: serving on {args.host}, not loopback: anyone who reaches it gets test data",
            file=sys.stderr,
        )
    clients = _load_clients(args.client)
    origin_port = args.port or 8765
    config = SandboxConfig(
        seed=args.seed,
        patients=args.patients,
        token_lifetime=args.token_lifetime,
        export_seconds=args.export_seconds,
        origin=f"http://127.0.0.1:{origin_port}",
        latency=args.latency_ms / 1000.0,
        error_rate=args.fault_rate,
        rate_limit_rps=args.rate_limit,
        drop_rate=args.drop_rate,
        token_flake_rate=args.token_flake_rate,
    )
    sandbox = EpicSandbox(config)
    for client_id, jwks in clients:
        try:
            sandbox.register_client(client_id, jwks)
        except (ValueError, KeyError) as exc:
            raise SystemExit(f"invalid JWK Set for {client_id}: {exc}") from None
    async with sandbox.serve(host=args.host, port=args.port) as base_url:
        print(f"Epic sandbox emulator (seed {args.seed}, {args.patients} generated patients)")
        print(f"FHIR base URL: {base_url}")
        print(f"Token URL:     {sandbox.token_url}")
        print(f"Stats:         {sandbox.origin}/__sandbox/stats")
        names = ", ".join(client_id for client_id, _ in clients) or "none (use --client ID=JWKS_FILE)"
        print(f"Clients:       {names}")
        print("Press Ctrl-C to stop.", flush=True)
        await anyio.sleep_forever()
    return 0
