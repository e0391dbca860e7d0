"""``epic-fhir token``: get a Backend Services token once, to check that a registration works.

Prints the token URL, the expiry and the granted scopes; the token itself only with ``--show-token``
(it is a credential: anyone holding it can read data for an hour). On failure prints Epic's error code
and what usually causes it.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import ConfigurationError, EpicFHIRClient, EpicFHIRError
from ..auth import BackendServicesAuth
from ._common import (
    EXIT_FAILURE,
    CLIError,
    add_password_argument,
    advice,
    check_server_url,
    describe,
    load_key,
)

_DESCRIPTION = (
    "Ask the token endpoint for a SMART Backend Services access token once, signing the client assertion with "
    "--key, to check that a registration works: prints the token URL, the key id, the expiry and the granted "
    "scopes (the token itself only with --show-token), or why Epic refused it. The token URL is discovered "
    "from --base-url unless --token-url is given."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "token",
        help="fetch a backend-services access token (checks a registration)",
        description=_DESCRIPTION,
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


async def token(args: argparse.Namespace) -> int:
    # Before any request: discovery and the signed assertion must not travel over plain http:// to another host.
    check_server_url(args.base_url)
    if args.token_url:
        check_server_url(args.token_url, "--token-url")
    keys = load_key(args.key, args.password_env)
    try:
        auth = BackendServicesAuth(
            args.client_id, keys, token_url=args.token_url, scope=args.scope, jku=args.jku
        )
        client = EpicFHIRClient(args.base_url, auth=auth)
    except ConfigurationError as exc:
        raise CLIError(advice(str(exc))) from None
    try:
        async with client:
            result = await auth.get_token()
    except EpicFHIRError as exc:  # TokenRequestError's str() carries Epic's error code and a hint
        raise CLIError(describe(exc, args.base_url), EXIT_FAILURE) from None
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
