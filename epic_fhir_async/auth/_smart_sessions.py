"""The signed-in users of a SMART web app, with one worker or many: sign-in, each request's auth, and one
refresh-token grant per user per expiry whichever workers the user's requests reach.

    sessions = SmartSessions(launch, store, cipher=cipher)                    # app-wide, with one client
    # /launch or /login: redirect to pending.url, keep pending.cookie in a short-lived cookie
    pending = await sessions.begin(launch=query.get("launch"), iss=query.get("iss"))
    # /callback: the session id goes in the session cookie
    session_id, tokens = await sessions.complete(cookies.get("smart_launch"), query)
    # any page
    auth = await sessions.auth(cookies.get("smart_session"))          # ReauthorizationRequired: sign in
    async with client.with_auth(auth) as fhir:
        patient = await fhir.read("Patient", auth.token_set.patient)

Nothing is kept per browser between ``begin`` and ``complete`` but the cookie: the launch's state, nonce and
PKCE verifier, encrypted and authenticated with the app's :class:`TokenCipher` (so the callback may reach any
worker, and a visitor who never signs in costs the store nothing). After sign-in the store holds the token set
under a new random session id (256 bits; a new one at every sign-in, so an id planted before cannot be used).

Each request's auth is built from the stored token set. When its access token is due (or a 401 says it was
revoked), the refresh runs under the store's lock for that session: the first request to take it reloads the
set, refreshes with the newest refresh token and saves the result; a request that took the lock after it
finds the new token in the store and uses it. A refresh Epic refuses deletes the session, so every worker's
next request ends in :class:`ReauthorizationRequired` too.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .._errors import (
    ConfigurationError,
    LaunchStateError,
    ReauthorizationRequired,
    StoreUnavailable,
    TokenSetUnreadable,
)
from .._urls import same_origin
from ._smart_auth import SmartAuth
from ._smart_launch import SmartLaunch
from ._smart_tokens import SmartTokenSet
from ._token import AccessToken
from ._token_manager import refresh_margin
from ._token_store import TokenCipher, TokenSetStore

__all__ = ["PendingSignIn", "SmartSessions"]

logger = logging.getLogger("epic_fhir_async.auth")

#: What ``secrets.token_urlsafe(32)`` makes; anything else in the cookie is refused before the store is asked.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")
#: Extra seconds a pending sign-in's cookie stays readable past the launch's max_age (clocks of two workers).
_CLOCK_SLACK = 60.0


def is_session_id(value: object) -> bool:
    """Whether ``value`` has the shape of a session id this module makes."""
    return isinstance(value, str) and _SESSION_ID.fullmatch(value) is not None


@dataclass(frozen=True, repr=False)
class PendingSignIn:
    """A started sign-in: send the browser to ``url``; keep ``cookie`` (the encrypted launch state) in a
    short-lived cookie (HttpOnly, SameSite=Lax, Secure on https) until the callback."""

    url: str
    cookie: str

    def __repr__(self) -> str:  # the URL carries the state and the launch token
        return "PendingSignIn(url=<authorization URL>, cookie=<encrypted>)"


class SmartSessions:
    """Sign-in and per-request auth for the users of a SMART web app, their token sets in ``store``.

    ``launch``: the app's :class:`SmartLaunch` (one per FHIR server). ``store``: a :class:`TokenSetStore`
    (:class:`InMemoryTokenSetStore` for one worker, :class:`RedisTokenSetStore` for several). ``cipher``:
    the :class:`TokenCipher` that encrypts the pending sign-in's cookie (every worker must have the same
    key). Works on asyncio and trio (a Redis store needs asyncio).
    """

    def __init__(self, launch: SmartLaunch, store: TokenSetStore, *, cipher: TokenCipher) -> None:
        if not isinstance(launch, SmartLaunch):
            raise ConfigurationError("SmartSessions needs the app's SmartLaunch")
        if not isinstance(store, TokenSetStore):
            raise ConfigurationError(
                "store must be a TokenSetStore (InMemoryTokenSetStore, RedisTokenSetStore or your own)"
            )
        if not isinstance(cipher, TokenCipher):
            raise ConfigurationError("cipher must be a TokenCipher (TokenCipher(key) with the app's key)")
        self.launch = launch
        self.store = store
        self._cipher = cipher

    def __repr__(self) -> str:
        return f"SmartSessions({self.launch!r}, {self.store!r})"

    async def begin(
        self, *, launch: str | None = None, iss: str | None = None, scopes: str | None = None
    ) -> PendingSignIn:
        """Start an EHR launch (``launch`` and ``iss`` as the EHR sent them) or a standalone one (neither):
        :meth:`SmartLaunch.begin`'s checks and errors (:class:`UntrustedIssuer`, ...)."""
        request = await self.launch.begin(launch=launch, iss=iss, scopes=scopes)
        # The URL and the launch token are not needed to finish (and the launch token is ~1.3 kB): the cookie
        # stays well under browsers' 4 kB.
        saved = {**request.to_dict(), "url": request.authorization_endpoint, "launch": None}
        return PendingSignIn(request.url, self._cipher.encrypt(saved).decode("ascii"))

    async def complete(
        self,
        cookie: str | None,
        callback: str | httpx.URL | Mapping[str, Any],
        *,
        previous_session: str | None = None,
    ) -> tuple[str, SmartTokenSet]:
        """Finish the sign-in whose pending ``cookie`` this browser sent, from the callback's URL or query:
        ``(session_id, token_set)``, the set already saved under the new id (``previous_session``, the
        browser's old session, is ended). Raises :class:`LaunchStateError` when the cookie is missing,
        unreadable or too old (start again), and :meth:`SmartLaunch.complete`'s errors."""
        if not cookie:
            raise LaunchStateError(
                "no sign-in is in progress in this browser (its cookie is missing or expired): start again"
            )
        max_age = self.launch.max_age
        try:
            saved = self._cipher.decrypt(
                cookie,
                max_age=None if max_age is None else max_age + _CLOCK_SLACK,
                what="pending sign-in's cookie",
            )
        except TokenSetUnreadable:
            raise LaunchStateError(
                "this browser's sign-in cookie is unreadable, tampered with or too old: start again"
            ) from None
        if not isinstance(saved, Mapping):
            raise LaunchStateError("this browser's sign-in cookie is damaged: start again")
        token_set = await self.launch.complete(saved, callback)
        session_id = secrets.token_urlsafe(32)
        await self.store.save(session_id, token_set)
        if (
            previous_session is not None
            and is_session_id(previous_session)
            and previous_session != session_id
        ):
            try:
                await self.store.delete(previous_session)
            except StoreUnavailable:
                logger.warning("could not end the browser's previous session (store unavailable)")
        return session_id, token_set

    async def auth(self, session_id: str | None) -> SmartAuth:
        """The auth of the signed-in user whose session cookie is ``session_id``, for this request:
        ``client.with_auth(auth)``; ``auth.token_set`` has the launch context (``patient``, ...).

        Raises :class:`ReauthorizationRequired` for no cookie, one this app did not make, or a session that is
        unknown or expired (sign in again); :class:`TokenSetUnreadable` (a kind of it) when the stored set does
        not decrypt; :class:`StoreUnavailable` when the store does not answer.
        """
        if session_id is None or session_id == "":
            raise ReauthorizationRequired("not signed in: sign in")
        if not is_session_id(session_id):
            raise ReauthorizationRequired("the session cookie is not one this app set: sign in again")
        token_set = await self.store.load(session_id)
        if token_set is None:
            raise ReauthorizationRequired(
                "this session is unknown or has ended (signed out, expired, or its refresh was refused): "
                "sign in again"
            )
        if token_set.client_id != self.launch.client_id or (
            # The set's base is the launch's own string when this launch made it (no URL parsing per request).
            token_set.fhir_base != self.launch.base_url
            and not same_origin(httpx.URL(token_set.fhir_base), httpx.URL(self.launch.base_url))
        ):
            raise ReauthorizationRequired(
                "this session belongs to another app or FHIR server (two apps share the store's prefix?): "
                "sign in again"
            )
        return _SessionAuth(token_set, store=self.store, session_id=session_id, **self.launch._auth_options())

    async def end(self, session_id: str | None) -> None:
        """Sign out: forget the session (its requests in flight finish; the next ones must sign in)."""
        if is_session_id(session_id):
            assert session_id is not None
            await self.store.delete(session_id)


class _SessionAuth(SmartAuth):
    """A :class:`SmartAuth` whose refreshes are coordinated through the store (see the module docstring)."""

    def __init__(
        self,
        token_set: SmartTokenSet,
        *,
        store: TokenSetStore,
        session_id: str,
        leeway: float,
        **options: Any,
    ) -> None:
        super().__init__(token_set, leeway=leeway, **options)
        self._store = store
        self._session_id = session_id
        self._session_leeway = leeway

    def __repr__(self) -> str:
        return f"SmartAuth(session=<masked>, {self.token_set!r})"

    def _usable(self, token_set: SmartTokenSet) -> bool:
        """Whether the token manager would take ``token_set``'s access token as fresh (its own margin)."""
        lifetime = None if token_set.issued_at is None else token_set.expires_at - token_set.issued_at
        leeway = self._session_leeway if token_set.refresh_token else 0.0
        return self._wall_clock() < token_set.expires_at - refresh_margin(lifetime, leeway)

    async def _fetch_token(self) -> AccessToken:
        held = self.token_set
        async with self._store.lock(self._session_id):
            saved = await self._store.load(self._session_id)
            if saved is None:
                raise ReauthorizationRequired(
                    "this session ended (signed out, or its refresh was refused on another request): sign in "
                    "again"
                )
            if saved.access_token != held.access_token and self._usable(saved):
                # Another request (on this worker or another) refreshed while this one waited: use its token.
                self._token_set = saved
                return self._access_token(saved)
            self._token_set = saved  # the newest refresh token (Epic may rotate it)
            try:
                token = await super()._fetch_token()
            except ReauthorizationRequired:
                try:
                    await self._store.delete(self._session_id)
                except StoreUnavailable:
                    logger.warning("could not end a session whose refresh was refused (store unavailable)")
                raise
            try:
                await self._store.save(self._session_id, self.token_set)
            except StoreUnavailable:
                # This request goes on with the new token; later ones refresh again from the stored set (and,
                # if Epic rotated the refresh token, are asked to sign in again).
                logger.warning("the refreshed tokens of a session could not be saved (store unavailable)")
            return token
