"""Clients registered by JWK Set URL (JKU): Epic's fetch and cache rules (docs/epic-notes.md §1.5).

Epic fetches a client's JKU at most once per presented JWT, and only when its cached keys have expired or do
not verify that JWT (so an unknown ``kid`` or a rotated key triggers a refetch). Keys are cached for at most
29 hours; the JKU response's ``Cache-Control`` can shorten that (``max-age``) or disable it (``no-store``).

The token endpoint verifies synchronously, so the app calls :meth:`JkuKeys.prepare` (async: it may fetch)
just before handing a token request to the OAuth server, which then reads :meth:`JkuKeys.keys`. Fetches go
through an injectable httpx transport so tests stay in-process and can count them
(``stats["jku_fetches"]``, ``stats["jku_fetches:<client id>"]``).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import httpx
from joserfc.jwk import KeySet

from .. import _json
from ._clock import SandboxClock
from ._http import Request
from ._jwt import AssertionRejected, load_public_jwks, signature_verifies, unverified_parts

__all__ = ["JKU_MAX_CACHE", "JkuKeys", "cache_lifetime"]

#: Epic's default and maximum JKU cache lifetime (docs/epic-notes.md §1.5).
JKU_MAX_CACHE = 29 * 3600.0
_FORM = "application/x-www-form-urlencoded"


def cache_lifetime(cache_control: str | None, ceiling: float = JKU_MAX_CACHE) -> float:
    """Seconds to cache a JKU response: ``max-age`` capped at ``ceiling``; 0 for ``no-store``/``no-cache``."""
    if not cache_control:
        return ceiling
    directives: dict[str, str] = {}
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        directives[name.strip().lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    max_age = directives.get("max-age")
    if max_age is None:
        return ceiling
    try:
        return max(0.0, min(float(int(max_age)), ceiling))
    except ValueError:
        return ceiling


@dataclass
class _Cached:
    keys: KeySet
    fresh_until: float


class JkuKeys:
    """The JKU registry and key cache of one sandbox; ``transport`` (public, settable) is used for fetches.

    Without a transport, fetches use a plain ``httpx.AsyncClient`` (real network: point it at 127.0.0.1).
    """

    def __init__(
        self,
        *,
        clock: SandboxClock,
        stats: collections.Counter[str],
        max_cache: float = JKU_MAX_CACHE,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.clock = clock
        self.stats = stats
        self.max_cache = max_cache
        self.transport = transport
        self.timeout = timeout
        self._urls: dict[str, str] = {}
        self._cache: dict[str, _Cached] = {}

    def register(self, client_id: str, url: str) -> None:
        """Make ``client_id`` a JKU client (replacing any cached keys); ValueError for a non-http(s) URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("a JWK Set URL must be an absolute http(s) URL")
        self._urls[client_id] = url
        self._cache.pop(client_id, None)

    def forget(self, client_id: str) -> None:
        """Stop treating ``client_id`` as a JKU client (it was re-registered with keys)."""
        self._urls.pop(client_id, None)
        self._cache.pop(client_id, None)

    def url_for(self, client_id: str) -> str | None:
        """The registered JWK Set URL of ``client_id`` (None for a client registered with keys)."""
        return self._urls.get(client_id)

    def keys(self, client_id: str) -> KeySet:
        """The keys last fetched for ``client_id``; ``jku_unavailable`` when no fetch ever succeeded."""
        cached = self._cache.get(client_id)
        if cached is None:
            raise AssertionRejected("jku_unavailable")
        return cached.keys

    async def prepare(self, request: Request) -> None:
        """Refresh the asserting client's keys if they are stale or do not verify its assertion.

        Epic's JWK Set URL fetch rule: docs/epic-notes.md §1.5.

        Anything that is not a JKU client's assertion is left alone (the token endpoint rejects it later).
        A failed fetch leaves the previous keys in place; with none, verification fails ``jku_unavailable``.
        """
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method != "POST" or ctype != _FORM:
            return
        assertion = dict(parse_qsl(request.body.decode("utf-8", "replace"))).get("client_assertion")
        if not assertion:
            return
        try:
            header, claims = unverified_parts(assertion)
        except AssertionRejected:
            return
        client_id = claims.get("iss")
        url = self._urls.get(client_id) if isinstance(client_id, str) else None
        if client_id is None or url is None or header.get("jku", url) != url:
            return  # not a JKU client, or a jku header Epic would refuse without fetching anything
        cached = self._cache.get(client_id)
        if (
            cached is not None
            and cached.fresh_until > self.clock.now()
            and signature_verifies(assertion, cached.keys)
        ):
            self.stats["jku_cache_hits"] += 1
            return
        await self._fetch(client_id, url)

    async def _fetch(self, client_id: str, url: str) -> None:
        self.stats["jku_fetches"] += 1
        self.stats[f"jku_fetches:{client_id}"] += 1
        try:
            response = await self._get(url)
            keys = load_public_jwks(_json.loads(response.content)) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, TypeError, AttributeError):
            keys = None
        if keys is None:  # unreachable, not 200, or not a usable public JWK Set
            self.stats["jku_fetch_failures"] += 1
            return
        lifetime = cache_lifetime(response.headers.get("cache-control"), self.max_cache)
        self._cache[client_id] = _Cached(keys, self.clock.now() + lifetime)

    async def _get(self, url: str) -> httpx.Response:
        headers = {"accept": "application/json"}
        if self.transport is None:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                return await client.get(url, headers=headers)
        response = await self.transport.handle_async_request(httpx.Request("GET", url, headers=headers))
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response
