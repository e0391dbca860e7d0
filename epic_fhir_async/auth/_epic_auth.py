"""The contract between :class:`~epic_fhir_async.EpicFHIRClient` and every auth method.

An auth method is an :class:`httpx.Auth` flow. The client *binds* it before the first request, handing it the
client's HTTP session, which every request (token requests and discovery included) goes through and whose FHIR
base URL's origin alone may receive the bearer token.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING

import httpx

from .._errors import ConfigurationError
from .._urls import same_origin

if TYPE_CHECKING:
    from .._http import HTTPSession

__all__ = ["EpicAuth", "StaticTokenAuth", "is_header_safe", "mask_secret"]


def mask_secret(value: str) -> str:
    """A masked form safe for ``repr`` and logs: no character of the secret, only its length."""
    return f"<masked, {len(value)} chars>"


def is_header_safe(value: str) -> bool:
    """Whether a bearer token is visible ASCII without spaces (RFC 6750's ``b64token`` is a subset)."""
    return value.isascii() and value.isprintable() and " " not in value


class EpicAuth(httpx.Auth):
    """Base class of the SDK's auth methods.

    Subclasses implement :meth:`async_auth_flow`. Token-bearing subclasses must call :meth:`may_receive_token`
    before adding an ``Authorization`` header: a bearer token goes only to the FHIR base's origin and to the
    token endpoint, never to a next link, redirect or file URL elsewhere (a hostile server could harvest it).
    """

    _session: HTTPSession | None = None
    _base_url: httpx.URL | None = None
    _extra_origins: tuple[httpx.URL, ...] = ()

    def bind(self, session: HTTPSession) -> None:
        """Called by the client: the requests this auth makes itself go through ``session``."""
        self._session = session
        self._base_url = session.base_url

    @property
    def session(self) -> HTTPSession:
        """The HTTP session of the client this auth is bound to."""
        if self._session is None:
            raise ConfigurationError(
                f"{type(self).__name__} is not bound to a client: pass it to EpicFHIRClient(auth=...)"
            )
        return self._session

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The ``httpx.AsyncClient`` of the bound client (token requests and discovery go through it)."""
        return self.session.http

    def may_receive_token(self, url: httpx.URL) -> bool:
        """Whether ``url`` is on the FHIR origin (or an origin the auth method itself trusts)."""
        if self._base_url is None:
            return False
        if same_origin(url, self._base_url):
            return True
        return any(same_origin(url, o) for o in self._extra_origins)

    def secrets(self) -> tuple[str, ...]:
        """The credentials this auth holds now (its tokens): the client masks them in every message it builds,
        even when a server echoes them back. Read only when an error is being built."""
        return ()

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise ConfigurationError("epic_fhir_async auth methods work only with httpx.AsyncClient")

    def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise NotImplementedError


class StaticTokenAuth(EpicAuth):
    """A bearer token you already have (from ``EPIC_FHIR_ACCESS_TOKEN``, a SMART launch, a secret store).

    It cannot refresh: when Epic answers 401 the error says the token is invalid or expired.
    """

    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ConfigurationError("StaticTokenAuth needs a non-empty bearer token string")
        if not is_header_safe(token.strip()):
            raise ConfigurationError(
                "the bearer token holds spaces, control or non-ASCII characters: pass the token alone, without "
                "'Bearer ' or a trailing newline"
            )
        self._token = token.strip()

    def __repr__(self) -> str:
        return f"StaticTokenAuth(token={mask_secret(self._token)!r})"

    def secrets(self) -> tuple[str, ...]:
        return (self._token,)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self.may_receive_token(request.url):
            request.headers["Authorization"] = f"Bearer {self._token}"
        yield request
