"""Where a web app keeps its signed-in users' token sets: the :class:`TokenSetStore` protocol, the in-memory
store of a single process, and :class:`TokenCipher`, the encryption of what leaves the process.

A store maps a session id (the random value of the user's cookie) to a :class:`SmartTokenSet`, and gives
each session a lock that every worker of the app respects: the refresh of one user's tokens happens under it,
so two requests on two workers cause one refresh-token grant (:mod:`._smart_sessions`). The Redis store is in
:mod:`._redis_store`.

Token sets hold long-lived credentials (a refresh token works for hours or months): a store that writes them
outside the process encrypts them (:class:`TokenCipher`, Fernet from ``cryptography``, with keys the app
provides), and nothing here logs, repr()s or puts one in an error.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio

from .. import _json
from .._errors import ConfigurationError, TokenSetUnreadable
from ._smart_tokens import SmartTokenSet

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

__all__ = [
    "DEFAULT_SESSION_TTL",
    "InMemoryTokenSetStore",
    "TokenCipher",
    "TokenSetStore",
    "entry_ttl",
]

#: How long a session is kept after it was last saved (a sign-in or a refresh), in seconds.
DEFAULT_SESSION_TTL = 12 * 3600.0
#: A token set without a refresh token is useless once its access token expired: kept this much longer.
_NO_REFRESH_GRACE = 60.0


@runtime_checkable
class TokenSetStore(Protocol):
    """Token sets by session id, shared by every worker of a web app (or only by one process, in memory).

    ``save`` replaces the session's token set (its entry lives ``ttl`` seconds from then), ``load`` returns it
    or ``None`` (unknown, expired or deleted), ``delete`` forgets it. ``lock(session_id)`` is an async context
    manager that only one holder, in any worker, is inside of at a time; it must expire on its own if its
    holder dies. A store that cannot answer raises :class:`~epic_fhir_async.StoreUnavailable`; one whose
    stored value does not decrypt raises :class:`~epic_fhir_async.TokenSetUnreadable`.
    """

    async def save(self, session_id: str, token_set: SmartTokenSet) -> None: ...

    async def load(self, session_id: str) -> SmartTokenSet | None: ...

    async def delete(self, session_id: str) -> None: ...

    def lock(self, session_id: str) -> AbstractAsyncContextManager[object]: ...


def check_ttl(ttl: float | None, name: str = "ttl") -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
        raise ConfigurationError(f"{name}={ttl!r}: a number of seconds > 0 (or None: until deleted)")
    return float(ttl)


def entry_ttl(token_set: SmartTokenSet, ttl: float | None) -> float | None:
    """How long to keep ``token_set``: ``ttl``, or less when it cannot be refreshed (then it is useless once
    its access token expired). Measured from the set's own lifetime, so no two clocks are compared."""
    if token_set.refresh_token is not None or token_set.issued_at is None:
        return ttl
    life = max(token_set.expires_at - token_set.issued_at, 0.0) + _NO_REFRESH_GRACE
    return life if ttl is None else min(ttl, life)


class InMemoryTokenSetStore:
    """The token sets of one process: for an app with one worker, and for tests.

    Several workers need a store they share (:class:`RedisTokenSetStore`). Entries expire ``ttl`` seconds
    after their last save (``None``: never); expired entries are dropped as they are met and swept as the
    store grows. Token sets stay in this process's memory, unencrypted, like any other object of the app.
    """

    def __init__(
        self, *, ttl: float | None = DEFAULT_SESSION_TTL, clock: Callable[[], float] = time.monotonic
    ):
        self._ttl = check_ttl(ttl)
        self._clock = clock
        self._entries: dict[str, tuple[SmartTokenSet, float]] = {}
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}
        self._sweep_at = 1024

    def __repr__(self) -> str:
        return f"InMemoryTokenSetStore(sessions={len(self._entries)})"

    async def save(self, session_id: str, token_set: SmartTokenSet) -> None:
        if not isinstance(token_set, SmartTokenSet):
            raise ConfigurationError("a TokenSetStore keeps SmartTokenSets")
        ttl = entry_ttl(token_set, self._ttl)
        self._entries[session_id] = (token_set, math.inf if ttl is None else self._clock() + ttl)
        if len(self._entries) >= self._sweep_at:
            now = self._clock()
            for key in [k for k, (_, until) in self._entries.items() if until <= now]:
                del self._entries[key]
            self._sweep_at = max(1024, 2 * len(self._entries))

    async def load(self, session_id: str) -> SmartTokenSet | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._entries[session_id]
            return None
        return entry[0]

    async def delete(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    @asynccontextmanager
    async def lock(self, session_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(session_id) or (anyio.Lock(), 0)
        self._locks[session_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[session_id]
            if users == 1:
                del self._locks[session_id]  # no waiter left: the table does not grow with the sessions
            else:
                self._locks[session_id] = (lock, users - 1)


class TokenCipher:
    """Authenticated encryption of what a web app keeps outside its process: token sets at rest (Redis) and a
    pending sign-in in the browser's cookie. Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``).

    ``keys``: one Fernet key (32 url-safe base64-encoded bytes, as :meth:`generate_key` makes) or several; the
    first encrypts, every one decrypts, so a key is rotated by putting the new one first and dropping the old
    one once what it encrypted has expired. Keep keys in your secret store, never in code. A value that does
    not decrypt (another key, tampered, too old) raises :class:`~epic_fhir_async.TokenSetUnreadable`, whose
    message holds nothing of the value or the key.
    """

    def __init__(self, keys: str | bytes | Sequence[str | bytes]) -> None:
        from cryptography.fernet import Fernet, MultiFernet  # loaded by apps that use it, not by the SDK

        listed = [keys] if isinstance(keys, (str, bytes)) else list(keys)
        if not listed:
            raise ConfigurationError(
                "TokenCipher needs at least one key (TokenCipher.generate_key() makes one)"
            )
        fernets = []
        for number, key in enumerate(listed, 1):
            try:
                fernets.append(Fernet(key.strip() if isinstance(key, (str, bytes)) else key))
            except (ValueError, TypeError):
                raise ConfigurationError(
                    f"encryption key #{number} is not a Fernet key (32 url-safe base64-encoded bytes, 44 "
                    "characters): make one with TokenCipher.generate_key() and keep it in your secret store"
                ) from None
        self._fernet: MultiFernet = MultiFernet(fernets)
        self._count = len(fernets)

    def __repr__(self) -> str:
        return f"TokenCipher(keys={self._count})"

    @staticmethod
    def generate_key() -> str:
        """A new random key (print it once into your secret store; every worker must get the same one)."""
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode("ascii")

    def encrypt(self, value: Any) -> bytes:
        """``value`` (anything JSON can hold) as an encrypted, authenticated token (URL-safe ASCII)."""
        return self._fernet.encrypt(_json.dumps(value))

    def decrypt(
        self, token: bytes | str, *, max_age: float | None = None, what: str = "stored token set"
    ) -> Any:
        """The value :meth:`encrypt` made, if it decrypts with one of the keys and (with ``max_age``) is no
        older than that many seconds; else :class:`~epic_fhir_async.TokenSetUnreadable` naming ``what``."""
        from cryptography.fernet import InvalidToken

        try:
            raw = self._fernet.decrypt(token, ttl=None if max_age is None else max(1, math.ceil(max_age)))
            return _json.loads(raw)
        except (InvalidToken, ValueError, TypeError):
            raise TokenSetUnreadable(
                f"the {what} does not decrypt with the app's encryption key(s) (a wrong key, a key rotated "
                "out too early, tampered or expired data): sign in again"
            ) from None
