"""One token per expiry for the whole fleet: the token manager's :class:`TokenCache` protocol, over Redis.

The token manager calls the cache only on its slow path (no token yet, or one about to expire), under its own
lock, so one task per process is here at a time. Across processes:

* :meth:`RedisTokenCache.get` returns the stored token while it is fresh. When it is missing or due for
  refresh, the first worker takes a short lock (``SET NX PX``: it expires, so a worker killed while it holds
  it blocks nobody for longer than ``lock_ttl``) and gets ``None``: its manager then asks the token endpoint
  and calls :meth:`set`, which stores the token (its Redis TTL is the token's remaining life, so no clock of
  any machine is compared with another's) and releases the lock. The other workers wait for the new entry.
* "Fresh" uses the manager's own margin (``min(leeway, 10 % of the lifetime)``, from the stored lifetime), so
  a worker never receives a token its manager would refuse, which would make it fetch one outside the lock.
* A 401 drops the shared entry only if it still holds the token that failed: the token manager calls
  :meth:`delete` with the refused token before it refreshes, so the refresh goes through the lock (one token
  request for the fleet); a token another worker already replaced stays.
* Tokens rebuilt from Redis are kept per key and handed out as the *same object* while the value is the
  same: the manager recognises the token it rejected by identity, so it never reinstalls it.

If Redis fails mid-job, the cache logs a warning and answers "nothing stored": each worker then fetches its own
token (today's behaviour), the job goes on. The entry holds the access token (never a refresh token): protect
the Redis server like the key (ACLs, TLS with ``rediss://``, no persistence needed).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .. import _json
from .._redis import redis_errors
from ..auth import AccessToken, TokenCacheKey
from ..auth._token_manager import refresh_margin

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisTokenCache"]

logger = logging.getLogger("epic_fhir_async.fleet")

_FINGERPRINT = 64  # hex characters of a SHA-256: the entry is "<fingerprint><json>"

# SET the entry with the token's remaining life; release the lock if we hold it.
_SET = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""
# Take the lock, or keep it when it is already ours (a failed fetch of ours left it; we try again).
_LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
# Release the lock if we still hold it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""
# Delete the entry only if it still holds the token with this fingerprint.
_DELETE_IF = """
local raw = redis.call('GET', KEYS[1])
if raw and string.sub(raw, 1, 64) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class RedisTokenCache:
    """A :class:`~epic_fhir_async.auth.TokenCache` shared by every worker through Redis (asyncio only).

    ``leeway`` must be the auth's (it decides when a token is due for refresh). ``lock_ttl`` bounds how long
    one worker may hold the refresh lock; ``poll`` is how often waiting workers look for the new token.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "epic-fhir",
        leeway: float = 60.0,
        lock_ttl: float = 15.0,
        poll: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._leeway = leeway
        self._lock_ttl_ms = max(1, int(lock_ttl * 1000))
        self._poll = poll
        self._clock = clock
        self._owner = secrets.token_hex(16)
        self._memo: dict[str, AccessToken] = {}
        self._set = client.register_script(_SET)
        self._lock = client.register_script(_LOCK)
        self._delete_if = client.register_script(_DELETE_IF)
        self._unlock = client.register_script(_UNLOCK)

    def __repr__(self) -> str:
        return f"RedisTokenCache(prefix={self._prefix!r})"

    def _keys(self, key: TokenCacheKey) -> tuple[str, str]:
        digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:24]
        base = f"{self._prefix}:token:{{{digest}}}"  # a hash tag: both keys in one slot on a Redis Cluster
        return base, f"{base}:lock"

    # -- the TokenCache protocol ----------------------------------------------------------------------------
    async def get(self, key: TokenCacheKey) -> AccessToken | None:
        entry, lock = self._keys(key)
        give_up = self._clock() + self._lock_ttl_ms / 1000 + 1.0
        try:
            while True:
                token = await self._read(entry)
                if token is not None:
                    return token
                if await self._lock(keys=[lock], args=[self._owner, self._lock_ttl_ms]):
                    # The holder before us may have stored its token and released the lock between our read
                    # and our lock: read again under the lock, or we would fetch a second token.
                    token = await self._read(entry)
                    if token is None:
                        return None  # ours to fetch: the manager calls the provider, then set()
                    await self._unlock(keys=[lock], args=[self._owner])
                    return token
                if self._clock() >= give_up:
                    # The lock holder neither stored a token nor let its lock expire in time: fetch ourselves
                    # (one more token request, but never a stuck job).
                    return None
                await anyio.sleep(self._poll)
        except redis_errors() as exc:
            self._warn("read the shared token", exc)
            return None

    async def set(self, key: TokenCacheKey, token: AccessToken) -> None:
        entry, lock = self._keys(key)
        remaining_ms = int((token.expires_at - self._clock()) * 1000)
        if remaining_ms <= 0:
            return
        body = {
            "v": token.value,
            "t": token.token_type,
            "s": sorted(token.scopes),
            "l": token.lifetime,
        }
        payload = fingerprint(token.value).encode() + _json.dumps(body)
        try:
            await self._set(keys=[entry, lock], args=[payload, remaining_ms, self._owner])
        except redis_errors() as exc:
            self._warn("store the shared token", exc)
            return
        self._memo[entry] = token

    async def delete(self, key: TokenCacheKey, token: AccessToken | None = None) -> None:
        entry, _ = self._keys(key)
        try:
            if token is None:
                await self._redis.delete(entry)
            else:
                await self._delete_if(keys=[entry], args=[fingerprint(token.value)])
        except redis_errors() as exc:
            self._warn("drop the shared token", exc)

    # -- helpers ----------------------------------------------------------------------------------------------
    async def _read(self, entry: str) -> AccessToken | None:
        """The stored token if it is fresh."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(entry)
            pipe.pttl(entry)
            raw, pttl = await pipe.execute()
        token = self._rebuild(entry, raw, pttl)
        return token if token is not None and self._fresh(token) else None

    def _rebuild(self, entry: str, raw: bytes | None, pttl: int) -> AccessToken | None:
        if raw is None or pttl is None or pttl <= 0 or len(raw) <= _FINGERPRINT:
            return None
        mark = raw[:_FINGERPRINT].decode("ascii", "replace")
        known = self._memo.get(entry)
        if known is not None and fingerprint(known.value) == mark:
            return known  # the same object: the manager recognises a token it rejected
        try:
            body: dict[str, Any] = _json.loads(raw[_FINGERPRINT:])
            value = str(body["v"])
        except (ValueError, KeyError, TypeError):
            return None
        now = self._clock()
        expires_at = now + pttl / 1000
        lifetime = body.get("l")
        issued_at = expires_at - float(lifetime) if isinstance(lifetime, (int, float)) else None
        token = AccessToken(
            value=value,
            expires_at=expires_at,
            scopes=frozenset(str(s) for s in body.get("s") or ()),
            token_type=str(body.get("t") or "Bearer"),
            issued_at=issued_at,
            expires_at_wall=time.time() + pttl / 1000,
        )
        self._memo[entry] = token
        return token

    def _fresh(self, token: AccessToken) -> bool:
        margin = refresh_margin(token.lifetime, self._leeway)
        return self._clock() < token.expires_at - margin

    def _warn(self, what: str, exc: BaseException) -> None:
        # The exception's type only: a redis error's text can quote the URL, password included.
        logger.warning("could not %s in Redis (%s): this worker uses its own token", what, type(exc).__name__)
