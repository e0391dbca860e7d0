"""``epic-fhir keys``: make a signing key pair for SMART Backend Services and print JWK Sets.

``generate`` writes the private key (PEM, mode 0600: it never leaves this machine) and the public
``jwks.json`` (host it at your app's JWK Set URL, or upload it for a legacy static-key app). ``jwks``
prints the public JWK Set of existing private keys (several for a rotation: oldest first).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..auth import generate_private_key, private_key_pem, public_jwks
from ._common import EXIT_FAILURE, CLIError, add_password_argument, load_key

PRIVATE_NAME = "private_key.pem"
JWKS_NAME = "jwks.json"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="generate signing keys and print JWK Sets for backend auth")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    gen = sub.add_parser("generate", help="write a new private key (0600) and its public jwks.json")
    gen.add_argument(
        "--alg",
        default="RS384",
        choices=["RS384", "ES384", "RS256", "RS512", "ES256"],
        help="signing algorithm: %(choices)s (default %(default)s; Epic backend apps use RS384 or ES384)",
    )
    gen.add_argument("--out", required=True, type=Path, help="directory to write the two files into")
    gen.add_argument("--kid", default=None, help="key id (default: the RFC 7638 thumbprint)")
    gen.add_argument("--force", action="store_true", help="overwrite existing files")
    gen.set_defaults(func=generate, cli_name="keys generate")

    show = sub.add_parser("jwks", help="print the public JWK Set of private key files")
    show.add_argument("keys", nargs="+", type=Path, metavar="KEY.pem", help="private keys, oldest first")
    add_password_argument(show)
    show.set_defaults(func=jwks, cli_name="keys jwks")


def _write_private(path: Path, data: bytes, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)  # created 0600: never readable by others, not even for a moment
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)  # an overwritten file keeps its old mode otherwise


def generate(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    private_path, jwks_path = out / PRIVATE_NAME, out / JWKS_NAME
    if not args.force and (private_path.exists() or jwks_path.exists()):
        raise CLIError(f"{private_path} or {jwks_path} exists; use --force to overwrite", EXIT_FAILURE)
    key = generate_private_key(args.alg, kid=args.kid)
    _write_private(private_path, private_key_pem(key), args.force)
    jwks_path.write_text(json.dumps(public_jwks(key), indent=2) + "\n")
    print(f"kid: {key.kid}")
    print(f"algorithm: {key.algorithm}")
    print(f"private key: {private_path} (mode 0600) - keep it secret; pass it with --key")
    print(f"public JWKS: {jwks_path} - host it at your app's JWK Set URL (https, no auth), or upload it")
    print("Epic can take hours to sync new keys; until then the token endpoint answers invalid_client.")
    return 0


def jwks(args: argparse.Namespace) -> int:
    keys = []
    try:
        for path in args.keys:
            keys.extend(load_key(path, args.password_env))
    except CLIError as exc:
        raise CLIError(exc.message, EXIT_FAILURE) from None
    print(json.dumps(public_jwks(*keys), indent=2))
    return 0
