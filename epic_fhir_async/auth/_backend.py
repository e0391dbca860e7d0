"""SMART Backend Services: the client_credentials grant authenticated by a signed JWT (docs/epic-notes.md §1).

    auth = BackendServicesAuth("my-non-prod-client-id", "private_key.pem")
    async with EpicFHIRClient(base_url, auth=auth) as client:
        await client.read("Patient", "erXuFYUfucBZaryVksYEcMg3")

The token URL is discovered from the FHIR base unless given. Every token request carries a new assertion
(new ``jti``); tokens are reused until shortly before they expire (Epic backend tokens live one hour and
there is no refresh token for this grant, docs/epic-notes.md §1.8).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._config import JWT_BEARER_ASSERTION_TYPE
from ._client_auth import PrivateKeyJWT
from ._keys import KeySource, SigningKey, load_private_keys, public_jwks
from ._token import AccessToken
from ._token_auth import TokenAuth
from ._token_cache import TokenCache
from ._token_request import post_token_request

__all__ = ["JWT_BEARER_ASSERTION_TYPE", "BackendServicesAuth"]


class BackendServicesAuth(TokenAuth):
    """Epic Backend Services (``client_credentials`` + ``private_key_jwt``).

    ``private_key``: a PEM path, PEM text/bytes (``password`` for an encrypted one), a JWK or JWKS (mapping
    or JSON), a :class:`SigningKey`, or a list of them oldest first for rotation (the newest signs).
    ``algorithm`` defaults by key type (RS384, ES384 for P-384, ES256 for P-256); ``key_id`` defaults to the
    RFC 7638 thumbprint; ``jku`` is sent in the header when given (it must equal the JWK Set URL registered
    on the app). ``scope`` is optional at Epic (the grant follows the app's Incoming APIs). ``leeway``
    (seconds) bounds the proactive refresh margin; ``clock`` times token expiry (``time.monotonic``),
    ``wall_clock`` stamps assertions (``time.time``). Without ``token_url`` the token endpoint is discovered
    and must be on the FHIR server's origin or on one of ``allowed_token_origins`` (it receives the signed
    assertions).
    """

    def __init__(
        self,
        client_id: str,
        private_key: KeySource | Sequence[KeySource],
        *,
        algorithm: str | None = None,
        key_id: str | None = None,
        jku: str | None = None,
        token_url: str | None = None,
        scope: str | Iterable[str] | None = None,
        password: str | bytes | None = None,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        cache: TokenCache | None = None,
        allowed_token_origins: Iterable[str] = (),
    ) -> None:
        super().__init__(
            client_id,
            token_url=token_url,
            scope=scope,
            leeway=leeway,
            clock=clock,
            wall_clock=wall_clock,
            cache=cache,
            allowed_token_origins=allowed_token_origins,
        )
        keys = load_private_keys(private_key, algorithm=algorithm, key_id=key_id, password=password)
        self._client_auth = PrivateKeyJWT(self.client_id, keys, jku=jku, wall_clock=wall_clock)

    def __repr__(self) -> str:
        key = self.signing_key
        return (
            f"BackendServicesAuth(client_id={self.client_id!r}, kid={key.kid!r}, algorithm={key.algorithm!r}, "
            f"token_url={self.token_url!r})"
        )

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Every configured key, oldest first."""
        return self._client_auth.keys

    @property
    def signing_key(self) -> SigningKey:
        """The key that signs assertions (the newest)."""
        return self._client_auth.signing_key

    @property
    def jku(self) -> str | None:
        return self._client_auth.jku

    def public_jwks(self) -> dict[str, Any]:
        """The JWK Set to host at the app's JWK Set URL: every configured key, public halves only."""
        return public_jwks(*self.keys)

    async def _fetch_token(self) -> AccessToken:
        grant = {"grant_type": "client_credentials"}
        if self.scope:
            grant["scope"] = self.scope
        return await post_token_request(
            self.session,
            await self.resolve_token_url(),
            grant=grant,
            client_auth=self._client_auth,
            clock=self._clock,
            wall_clock=self._wall_clock,
            succeeded_before=self._succeeded,
        )
