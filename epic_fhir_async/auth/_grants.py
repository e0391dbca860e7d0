"""The other token-fetching grants: client secrets (client_credentials) and refresh tokens.

Epic does not accept client secrets for backend services (JWTs are mandatory there, docs/epic-notes.md
§1.2), but other FHIR servers and Epic's launch flows do (§2.3); :class:`ClientSecretAuth` covers them.
:class:`RefreshTokenAuth` is the refresh-token grant (docs/epic-notes.md §2.6) used after a SMART App Launch:
it keeps the newest refresh token, since Epic may rotate it on every refresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

from .._errors import ConfigurationError
from ._client_auth import ClientAuthentication, client_authentication
from ._epic_auth import mask_secret
from ._keys import KeySource
from ._token import AccessToken
from ._token_auth import TokenAuth
from ._token_cache import TokenCache
from ._token_request import post_token_request

__all__ = ["ClientSecretAuth", "RefreshTokenAuth"]

SecretMethod = Literal["client_secret_basic", "client_secret_post"]


class ClientSecretAuth(TokenAuth):
    """``client_credentials`` with a client secret, sent as HTTP Basic (default) or in the form body.

    With ``client_secret_basic`` the id and secret are form-urlencoded before base64 (Epic: docs/epic-notes.md
    §2.3; RFC 6749 §2.3.1), so secrets containing ``:`` or ``+`` survive.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        method: SecretMethod = "client_secret_basic",
        token_url: str | None = None,
        scope: str | Iterable[str] | None = None,
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
        if not isinstance(client_secret, str):
            raise ConfigurationError("ClientSecretAuth needs the client_secret string")
        self._client_auth = client_authentication(
            self.client_id, client_secret=client_secret, secret_method=method
        )
        self.method = method

    def __repr__(self) -> str:
        return f"ClientSecretAuth(client_id={self.client_id!r}, method={self.method!r}, token_url={self.token_url!r})"

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


class RefreshTokenAuth(TokenAuth):
    """The ``refresh_token`` grant, for a public or a confidential client.

    Client authentication: ``client_secret`` (Basic, or ``secret_method="client_secret_post"``), or
    ``private_key`` (a signed assertion, same rules as backend services), or neither (a public client: the
    ``client_id`` goes in the form). ``access_token`` seeds the manager with the token the launch already
    returned, so the first request needs no refresh. When a response carries a new refresh token it
    replaces the old one (:attr:`refresh_token`; persist it, Epic may have invalidated the old one).
    """

    def __init__(
        self,
        client_id: str,
        refresh_token: str,
        *,
        client_secret: str | None = None,
        secret_method: SecretMethod = "client_secret_basic",  # noqa: S107 (a method name)
        private_key: KeySource | Sequence[KeySource] | None = None,
        algorithm: str | None = None,
        key_id: str | None = None,
        jku: str | None = None,
        password: str | bytes | None = None,
        access_token: AccessToken | None = None,
        token_url: str | None = None,
        scope: str | Iterable[str] | None = None,
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
        if not isinstance(refresh_token, str) or not refresh_token.strip():
            raise ConfigurationError("RefreshTokenAuth needs a non-empty refresh_token")
        self._refresh_token = refresh_token.strip()
        self._client_auth: ClientAuthentication = client_authentication(
            self.client_id,
            client_secret=client_secret,
            secret_method=secret_method,
            private_key=private_key,
            algorithm=algorithm,
            key_id=key_id,
            jku=jku,
            password=password,
            wall_clock=wall_clock,
        )
        if access_token is not None:
            self._manager.set(access_token)

    def __repr__(self) -> str:
        return (
            f"RefreshTokenAuth(client_id={self.client_id!r}, refresh_token={mask_secret(self._refresh_token)!r}, "
            f"client_auth={type(self._client_auth).__name__})"
        )

    @property
    def refresh_token(self) -> str:
        """The newest refresh token (rotated by the server on each refresh when it sends a new one)."""
        return self._refresh_token

    async def _fetch_token(self) -> AccessToken:
        grant = {"grant_type": "refresh_token", "refresh_token": self._refresh_token}
        if self.scope:
            grant["scope"] = self.scope
        token = await post_token_request(
            self.session,
            await self.resolve_token_url(),
            grant=grant,
            client_auth=self._client_auth,
            clock=self._clock,
            wall_clock=self._wall_clock,
            # a bare 400 is still retried once; invalid_grant (a used refresh token) never is
            succeeded_before=False,
        )
        if token.refresh_token:
            self._refresh_token = token.refresh_token
        return token
