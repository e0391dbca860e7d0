"""OpenID Connect for the sandbox: its id_token signing key, the id_tokens, the key set and discovery documents.

Reproduces Epic's id_tokens (docs/epic-notes.md §2.5): RS256 only, ``kid`` = base64 SHA-256 of the public key,
``iss`` = ``<server>/oauth2``, ``aud`` = client id, ``exp`` = ``iat`` + 300, ``sub`` = the user's FHIR id,
``fhirUser`` an absolute URL, ``nonce`` echoed. The key lives in memory only (generated on first use, so
sandboxes that never sign an id_token pay nothing) and is published at Epic's OIDC key URL.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from ._smart_model import Identity

__all__ = ["ID_TOKEN_LIFETIME", "OIDC_KEYS_PATH", "OidcSigner", "id_token_claims", "openid_configuration"]

#: docs/epic-notes.md §2.5: Epic's id_tokens live five minutes.
ID_TOKEN_LIFETIME = 300
#: docs/epic-notes.md §0: where Epic publishes its id_token keys, under the server root.
OIDC_KEYS_PATH = "/api/epic/2019/Security/Open/PublicKeys/530005/OIDC"
_OIDC_SCOPES = ("openid", "fhirUser", "profile")


_PROCESS_KEY: list[RSAKey] = []


def _process_key() -> RSAKey:
    """One id_token key per process, made on first use: RSA-2048 generation costs ~70 ms, and test suites
    build dozens of sandboxes. Each sandbox still publishes the key it signs with, so nothing observable
    changes; the key lives in memory only."""
    if not _PROCESS_KEY:
        _PROCESS_KEY.append(RSAKey.generate_key(2048))
    return _PROCESS_KEY[0]


class OidcSigner:
    """The sandbox's id_token key (RSA 2048, never written anywhere) and its published JWKS."""

    def __init__(self) -> None:
        self._key: RSAKey | None = None
        self._kid = ""

    def _ensure(self) -> RSAKey:
        if self._key is None:
            key = _process_key()
            # docs/epic-notes.md §2.5: kid = base64 (standard, padded, like Epic's example) of the SHA-256 of
            # the DER public key.
            self._kid = base64.b64encode(hashlib.sha256(key.as_der(private=False)).digest()).decode("ascii")
            self._key = key
        return self._key

    @property
    def kid(self) -> str:
        self._ensure()
        return self._kid

    def jwks(self) -> dict[str, Any]:
        """The public key set served at the OIDC key URL and named by ``jwks_uri``."""
        public = self._ensure().as_dict(private=False)
        return {"keys": [{**public, "kid": self._kid, "alg": "RS256", "use": "sig"}]}

    def sign(self, claims: dict[str, Any]) -> str:
        key = self._ensure()
        return jwt.encode({"alg": "RS256", "typ": "JWT", "kid": self._kid}, claims, key, algorithms=["RS256"])


def id_token_claims(
    *,
    issuer: str,
    client_id: str,
    identity: Identity,
    fhir_base: str,
    scopes: Iterable[str],
    nonce: str | None,
    now: float,
) -> dict[str, Any]:
    """The claims Epic puts in an id_token (docs/epic-notes.md §2.5); ``fhirUser`` only with that scope."""
    scopes = set(scopes)
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": identity.fhir_id,
        "aud": client_id,
        "iat": iat,
        "exp": iat + ID_TOKEN_LIFETIME,
    }
    if "fhirUser" in scopes:
        claims["fhirUser"] = f"{fhir_base}/{identity.resource_type}/{identity.fhir_id}"
    if "profile" in scopes:
        claims["preferred_username"] = identity.username
    if nonce is not None:
        claims["nonce"] = nonce
    return claims


def openid_configuration(*, issuer: str, jwks_uri: str) -> dict[str, Any]:
    """``<oauth2>/.well-known/openid-configuration`` (docs/epic-notes.md §0): issuer = the ``/oauth2`` URL."""
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": jwks_uri,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "client_secret_basic",
            "private_key_jwt",
        ],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": list(_OIDC_SCOPES),
        "claims_supported": ["iss", "sub", "aud", "iat", "exp", "nonce", "fhirUser", "preferred_username"],
    }
