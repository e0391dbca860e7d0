"""``epic-fhir token``: get a Backend Services token once, to check that a registration works.

Prints the token URL, the expiry and the granted scopes; the token itself only with ``--show-token``
(it is a credential: anyone holding it can read data for an hour). On failure prints Epic's error code
and what usually causes it.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from .. import EpicFHIRClient, EpicFHIRError
from ..auth import BackendServicesAuth
from ._common import add_password_argument, describe, load_key


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "token", help="fetch a backend-services access token (checks a registration)"
    )
    parser.add_argument("--base-url", required=True, help="FHIR R4 base URL (token URL discovered from it)")
    parser.add_argument(
        "--client-id", required=True, help="the app's client id (non-production for the sandbox)"
    )
    parser.add_argument("--key", required=True, type=Path, metavar="KEY.pem", help="private key file")
    parser.add_argument("--token-url", default=None, help="token endpoint (default: discovered)")
    parser.add_argument("--scope", default=None, help="scopes to request (optional at Epic)")
    parser.add_argument("--jku", default=None, help="JWK Set URL to send in the assertion header")
    add_password_argument(parser)
    parser.add_argument("--show-token", action="store_true", help="also print the access token itself")
    parser.set_defaults(func=token)


def _http_client() -> httpx.AsyncClient:
    """The HTTP client the command uses (a seam for tests)."""
    return httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))


async def token(args: argparse.Namespace) -> int:
    keys = load_key(args.key, args.password_env)
    try:
        auth = BackendServicesAuth(
            args.client_id, keys, token_url=args.token_url, scope=args.scope, jku=args.jku
        )
        async with _http_client() as http, EpicFHIRClient(args.base_url, auth=auth, http_client=http):
            result = await auth.get_token()
    except EpicFHIRError as exc:  # TokenRequestError's str() carries Epic's error code and a hint
        print(f"error: {describe(exc, args.base_url)}", file=sys.stderr)
        return 1
    expires = (
        datetime.fromtimestamp(result.expires_at_wall, tz=timezone.utc).isoformat(timespec="seconds")
        if result.expires_at_wall is not None
        else "unknown"
    )
    print(f"token URL: {auth.token_url}")
    print(f"kid: {auth.signing_key.kid} ({auth.signing_key.algorithm})")
    print(f"token type: {result.token_type}")
    print(f"expires in: {result.lifetime or 0:.0f} s (at {expires})")
    print(f"scopes: {' '.join(sorted(result.scopes)) or '(none listed)'}")
    if args.show_token:
        print(f"access token: {result.value}")
    return 0
