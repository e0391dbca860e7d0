"""Where tokens are kept between fetches: a small protocol keyed by (token URL, client id, scope).

One cache entry per (token URL, client id, scopes), so tokens of different servers, clients or scopes never
mix. The default is an in-memory dict owned by one auth object; pass the same :class:`InMemoryTokenCache` to
several auth objects to share tokens within a process, or implement :class:`TokenCache` over Redis or a file
to share them across processes (persist :attr:`AccessToken.expires_at_wall` and rebuild the token on the
reader's clock).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

from ._token import AccessToken

__all__ = ["InMemoryTokenCache", "TokenCache", "TokenCacheKey"]


class TokenCacheKey(NamedTuple):
    """What a token is valid for. ``scope`` is the requested scope string (``""`` when none was sent)."""

    token_url: str
    client_id: str
    scope: str = ""


@runtime_checkable
class TokenCache(Protocol):
    """Storage for tokens. Called only on the slow path (no token, or one about to expire), under a lock."""

    async def get(self, key: TokenCacheKey) -> AccessToken | None:
        """The stored token for ``key``, expired or not (the manager checks), or ``None``."""
        ...

    async def set(self, key: TokenCacheKey, token: AccessToken) -> None:
        """Store ``token`` for ``key``, replacing any older one."""
        ...

    async def delete(self, key: TokenCacheKey, token: AccessToken | None = None) -> None:
        """Forget ``key``'s token; when ``token`` is given, only if it is still the stored one.

        The token manager calls it with the refused token after a 401, before it refreshes; another holder of a
        shared cache may have stored a replacement by then, which must stay.
        """
        ...


class InMemoryTokenCache:
    """The default :class:`TokenCache`: a dict in this process."""

    def __init__(self) -> None:
        self._tokens: dict[TokenCacheKey, AccessToken] = {}

    def __repr__(self) -> str:
        return f"InMemoryTokenCache(entries={len(self._tokens)})"

    def __len__(self) -> int:
        return len(self._tokens)

    async def get(self, key: TokenCacheKey) -> AccessToken | None:
        return self._tokens.get(key)

    async def set(self, key: TokenCacheKey, token: AccessToken) -> None:
        self._tokens[key] = token

    async def delete(self, key: TokenCacheKey, token: AccessToken | None = None) -> None:
        if token is None or self._tokens.get(key) is token:
            self._tokens.pop(key, None)
