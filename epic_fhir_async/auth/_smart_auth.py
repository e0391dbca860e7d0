"""The auth method of a launched SMART app: the launch's token, refreshed with the refresh-token grant.

It is a :class:`TokenAuth`, so its token lives in a :class:`TokenManager` like every other grant's: one
refresh per expiry however many requests wait, a 401 invalidates the token the request carried and replays
once (a token can be revoked early). Refresh happens whenever a refresh token came, whatever ``scope`` says:
Epic may grant persistent access without echoing ``offline_access`` (docs/epic-notes.md §2.4). Without a
refresh token (public apps, apps without persistent access, §2.3) an expired token raises
:class:`ReauthorizationRequired`: the app must send the user through the launch again.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Union

import httpx

from .._errors import ConfigurationError, ReauthorizationRequired, TokenRequestError
from .._urls import redact_url, same_origin
from ._client_auth import ClientAuthentication, client_authentication
from ._keys import KeySource
from ._smart_tokens import SmartTokenSet
from ._token import AccessToken
from ._token_auth import TokenAuth
from ._token_request import post_token_request

if TYPE_CHECKING:
    from .._http import HTTPSession

__all__ = ["RefreshCallback", "SmartAuth"]

logger = logging.getLogger("epic_fhir_async.auth")

#: Called with the new token set after every refresh (sync or async): persist it, Epic may rotate the
#: refresh token and invalidate the old one.
RefreshCallback = Callable[[SmartTokenSet], Union[Awaitable[None], None]]  # noqa: UP007 (runtime alias, py3.10)


class SmartAuth(TokenAuth):
    """Bearer auth from a :class:`SmartTokenSet`, refreshing with its refresh token.

    Usually made by :meth:`SmartLaunch.auth`, which supplies the launch's client authentication (all its
    options). Built directly, it takes a ``client_secret`` (Basic) or a ``private_key`` (``private_key_jwt``
    with the key's default algorithm and kid), or neither: a public client. ``on_refresh`` receives each new :attr:`token_set`. Keep one
    ``SmartAuth`` per user session (it owns the lock that makes refreshes single-flight); rebuild it from a
    saved token set only after a restart. It sends the token only to the origin of the token set's FHIR base.
    """

    def __init__(
        self,
        token_set: SmartTokenSet,
        *,
        client_secret: str | None = None,
        private_key: KeySource | Sequence[KeySource] | None = None,
        client_auth: ClientAuthentication | None = None,
        on_refresh: RefreshCallback | None = None,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(token_set, SmartTokenSet):
            raise ConfigurationError(
                "SmartAuth needs a SmartTokenSet (SmartTokenSet.from_dict(saved) restores one)"
            )
        # Without a refresh token there is nothing to do early: refresh "margin" 0 means the token is used
        # until it really expires, then ReauthorizationRequired.
        super().__init__(
            token_set.client_id,
            token_url=token_set.token_url,
            leeway=leeway if token_set.refresh_token else 0.0,
            clock=clock,
            wall_clock=wall_clock,
        )
        if client_auth is None:
            client_auth = client_authentication(
                self.client_id, client_secret=client_secret, private_key=private_key, wall_clock=wall_clock
            )
        elif client_auth.client_id != self.client_id:
            raise ConfigurationError("the client authentication is for another client id than the token set")
        self._client_auth = client_auth
        self._token_set = token_set
        self.on_refresh = on_refresh
        self._manager.set(self._access_token(token_set))

    def __repr__(self) -> str:
        return f"SmartAuth({self._token_set!r}, client_auth={type(self._client_auth).__name__})"

    @property
    def token_set(self) -> SmartTokenSet:
        """The newest token set (replaced after each refresh; save :meth:`SmartTokenSet.to_dict`)."""
        return self._token_set

    def bind(self, session: HTTPSession) -> None:
        """Bind to a client; its FHIR base must be on the origin the tokens were issued for."""
        if not same_origin(session.base_url, httpx.URL(self._token_set.fhir_base)):
            raise ConfigurationError(
                f"these tokens belong to {redact_url(self._token_set.fhir_base)}; refusing to send them to "
                f"{redact_url(session.base_url)}"
            )
        super().bind(session)

    def _access_token(self, token_set: SmartTokenSet) -> AccessToken:
        # The set's times are epoch seconds; the manager's clock may be monotonic: translate through "now".
        mono, wall = self._clock(), self._wall_clock()
        return AccessToken(
            value=token_set.access_token,
            expires_at=mono + (token_set.expires_at - wall),
            scopes=token_set.scopes,
            token_type=token_set.token_type,
            issued_at=None if token_set.issued_at is None else mono - (wall - token_set.issued_at),
            expires_at_wall=token_set.expires_at,
            refresh_token=token_set.refresh_token,
        )

    async def _fetch_token(self) -> AccessToken:
        current = self._token_set
        if current.refresh_token is None:
            raise ReauthorizationRequired(
                "the SMART launch's access token expired and no refresh token came with it (Epic gives refresh "
                "tokens only to confidential apps with persistent access): send the user through the launch again"
            )
        issued_at = self._wall_clock()
        try:
            token = await post_token_request(
                self.session,
                current.token_url,
                grant={"grant_type": "refresh_token", "refresh_token": current.refresh_token},
                client_auth=self._client_auth,
                clock=self._clock,
                wall_clock=self._wall_clock,
                succeeded_before=False,
            )
        except TokenRequestError as exc:
            if exc.error != "invalid_grant":
                raise
            # A refused refresh token never works again: forget it so later requests fail fast.
            self._token_set = replace(current, refresh_token=None)
            raise ReauthorizationRequired(
                "the refresh token was refused (invalid_grant: expired, revoked or already rotated): send the "
                "user through the launch again"
            ) from exc
        self._token_set = current.refreshed(token, issued_at=issued_at)
        await self._notify(self._token_set)
        return token

    async def _notify(self, token_set: SmartTokenSet) -> None:
        callback = self.on_refresh
        if callback is None:
            return
        try:
            result = callback(token_set)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # The refresh itself worked and the new tokens are in memory; failing the FHIR request that
            # triggered it would not bring the lost write back.
            logger.warning("on_refresh failed; the refreshed tokens are only in memory", exc_info=True)
