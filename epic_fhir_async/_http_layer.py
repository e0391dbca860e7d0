"""The HTTP layer under :class:`~epic_fhir_async.EpicFHIRClient`: URLs, requests, redirects, typed errors, JSON.

Every FHIR interaction goes through :meth:`HTTPLayer.request` (body read, status checked) or
:meth:`HTTPLayer.stream` (status checked, body left to the caller). The bearer token only ever travels to the
FHIR base's origin: a next link, redirect or URL elsewhere is refused (or, when allowed, sent without it).
Per request the URL is parsed once (``url()``; httpx only copies an ``httpx.URL``) and the body read once,
inside the retrying transport; on 1000 small pages this layer measured ~5% over a bare ``httpx`` loop, all of
the rest being httpx's own per-request cost (perf-anchors.md, scenario A).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from . import _json
from ._config import FHIR_JSON, JSON_CONTENT_TYPES
from ._errors import (
    ClientClosed,
    EpicFHIRError,
    RequestTimeout,
    TransportError,
    UnexpectedContentError,
    UnsafeURLError,
    error_from_response,
    join_url,
    redact_url,
)
from ._limits import read_limited
from ._retry import READ_BODY, RETRY_SAFE
from .auth._base import EpicAuth, same_origin

__all__ = ["HTTPLayer"]

_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


async def _read(response: httpx.Response, limit: int | None) -> None:
    # Our RetryTransport has read the body already (READ_BODY); a caller-owned client's connection can still
    # be cut mid-body here, which must surface as our TransportError, not a bare httpx exception.
    try:
        await read_limited(response, limit)
    except httpx.HTTPError as exc:
        request = response.request
        raise TransportError(
            f"{type(exc).__name__} reading the body of {request.method} {redact_url(request.url)}",
            method=request.method,
            url=redact_url(request.url),
        ) from exc


def _media_type(response: httpx.Response) -> str:
    value: str = response.headers.get("content-type", "")
    return value.split(";", 1)[0].strip().lower()


class HTTPLayer:
    """URL resolution, request building and sending for :class:`~epic_fhir_async.EpicFHIRClient`.

    The client's ``__init__`` sets the attributes below; this class holds no state of its own.
    """

    base_url: httpx.URL
    http: httpx.AsyncClient
    auth: EpicAuth | None
    max_response_bytes: int | None
    _base_prefix: str
    _send_headers: dict[str, str] | None
    _read_body: int | bool
    _owns_http: bool

    def _closed_message(self) -> str:
        if self._owns_http:
            return (
                "this EpicFHIRClient is closed (aclose() was called or its `async with` block ended): make the "
                "calls inside the block, or create a new client"
            )
        return (
            "the http_client given to this EpicFHIRClient is closed: keep it open while the client is in use"
        )

    # -- URLs -------------------------------------------------------------------------------------------

    def url(self, url: str | httpx.URL, *, allow_foreign_origin: bool = False) -> httpx.URL:
        """Resolve ``url`` against the base; an absolute URL elsewhere raises :class:`UnsafeURLError`."""
        text = str(url)
        try:
            if "://" not in text and not text.startswith("//"):
                if text.startswith("/"):  # absolute path: same origin as the base
                    return self.base_url.join(text)
                return httpx.URL(self._base_prefix + text)
            # "//host/path" (scheme-relative) names another host just like an absolute URL does.
            absolute = httpx.URL(text) if "://" in text else self.base_url.join(text)
        except httpx.InvalidURL:
            # Usually a next link or Content-Location from the server; the text may hold patient ids.
            raise EpicFHIRError(
                "invalid URL (from the server or the caller; not shown: it may hold ids)"
            ) from None
        if not allow_foreign_origin and not same_origin(absolute, self.base_url):
            raise UnsafeURLError(
                f"refusing {redact_url(absolute)}: not on the FHIR server's origin, it would receive the token"
            )
        return absolute

    # -- low level --------------------------------------------------------------------------------------

    async def _send(
        self, request: httpx.Request, *, stream: bool, allow_foreign_origin: bool
    ) -> httpx.Response:
        if self.http.is_closed:  # httpx would raise a bare RuntimeError
            raise ClientClosed(self._closed_message())
        auth = self.auth
        foreign = not same_origin(request.url, self.base_url)
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                response = await self.http.send(
                    request, auth=None if foreign else auth, stream=True, follow_redirects=False
                )
            except httpx.TimeoutException as exc:
                raise RequestTimeout(
                    f"{type(exc).__name__} during {request.method} {redact_url(request.url)}",
                    method=request.method,
                    url=redact_url(request.url),
                ) from exc
            except httpx.HTTPError as exc:
                raise TransportError(
                    f"{type(exc).__name__} during {request.method} {redact_url(request.url)}",
                    method=request.method,
                    url=redact_url(request.url),
                ) from exc
            except httpx.InvalidURL:  # httpx pre-builds the redirect of a malformed Location and fails
                raise EpicFHIRError("the server sent an invalid redirect Location (not shown)") from None
            if response.status_code in _REDIRECTS and "location" in response.headers:
                await response.aclose()
                target = join_url(request.url, response.headers["location"])
                if not same_origin(target, self.base_url) and not allow_foreign_origin:
                    raise UnsafeURLError(
                        f"refusing a redirect from {redact_url(request.url)} to {redact_url(target)}: another "
                        "origin would receive the token"
                    )
                foreign = not same_origin(target, self.base_url)
                method = "GET" if response.status_code == 303 else request.method
                # The auth flow wrote the token into these headers; it adds it again only where it may go.
                headers = request.headers.copy()
                headers.pop("Authorization", None)
                request = self.http.build_request(method, target, headers=headers)
                continue
            if response.status_code >= 400:
                await _read(response, self.max_response_bytes)
                await response.aclose()
                media = _media_type(response)
                if response.content and response.status_code < 429 and ("html" in media or "xml" in media):
                    # Epic's IIS answers unknown types/paths with an HTML 404 page (§3.7): not a FHIR error.
                    # A 429 or 5xx HTML page (a gateway's) stays RateLimited/ServerError: the status is the news.
                    raise self._unexpected(response, media)
                raise error_from_response(response)
            if not stream:
                await _read(response, self.max_response_bytes)
            return response
        raise TransportError(f"too many redirects from {redact_url(request.url)}", method=request.method)

    def _build(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        data: Mapping[str, Any] | None = None,
        allow_foreign_origin: bool = False,
        extensions: dict[str, Any] | None = None,
    ) -> httpx.Request:
        target = self.url(url, allow_foreign_origin=allow_foreign_origin)
        send_headers: dict[str, str] = {}
        if self._send_headers is not None:
            send_headers.update(self._send_headers)
        if headers:
            send_headers.update(headers)
        if json is not None:
            content = _json.dumps(json)
            send_headers.setdefault("Content-Type", FHIR_JSON)
        return self.http.build_request(
            method,
            target,
            params=params,
            headers=send_headers or None,
            content=content,
            data=data,
            extensions=extensions,
        )

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        data: Mapping[str, Any] | None = None,
        allow_foreign_origin: bool = False,
        retry_safe: bool = False,
    ) -> httpx.Response:
        """Send a request; the body is read and the status checked (errors are typed).

        Relative URLs resolve against the base. ``allow_foreign_origin`` permits another origin (no token is
        sent there). ``retry_safe`` lets the retrying transport repeat a POST.
        """
        request = self._build(
            method,
            url,
            params=params,
            headers=headers,
            json=json,
            content=content,
            data=data,
            allow_foreign_origin=allow_foreign_origin,
            extensions={READ_BODY: self._read_body, RETRY_SAFE: True}
            if retry_safe
            else {READ_BODY: self._read_body},
        )
        return await self._send(request, stream=False, allow_foreign_origin=allow_foreign_origin)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        allow_foreign_origin: bool = False,
    ) -> AsyncIterator[httpx.Response]:
        """``async with client.stream("GET", url) as response``: the body is not read; status checked."""
        request = self._build(
            method, url, params=params, headers=headers, allow_foreign_origin=allow_foreign_origin
        )
        response = await self._send(request, stream=True, allow_foreign_origin=allow_foreign_origin)
        try:
            yield response
        finally:
            await response.aclose()

    def decode(self, response: httpx.Response) -> Any:
        """The JSON body, after checking the Content-Type (Epic sends XML or IIS HTML in some cases, §3.1)."""
        media = _media_type(response)
        if media not in JSON_CONTENT_TYPES:
            raise self._unexpected(response, media)
        try:
            return _json.loads(response.content)
        except ValueError as exc:
            raise EpicFHIRError(
                f"invalid JSON from {response.request.method} {redact_url(response.request.url)}"
            ) from exc

    @staticmethod
    def _unexpected(response: httpx.Response, media: str) -> UnexpectedContentError:
        request = response.request
        kind = "XML" if "xml" in media else "HTML" if "html" in media else media or "no content type"
        hint = ""
        if kind == "HTML" and response.status_code == 404:
            hint = ": an IIS 404 page, Epic's answer for an unknown resource type or unsupported path"
        elif kind == "XML":
            hint = ": Epic answers XML when the request lacks Accept: application/fhir+json"
        return UnexpectedContentError(
            f"expected FHIR JSON from {request.method} {redact_url(request.url)} but got {kind} "
            f"({media or 'unknown'}, {len(response.content)} bytes, status {response.status_code}){hint}",
            status_code=response.status_code,
            content_type=media,
            method=request.method,
            url=redact_url(request.url),
        )

    async def _json(self, method: str, url: str | httpx.URL, **kwargs: Any) -> Any:
        body = self.decode(await self.request(method, url, **kwargs))
        if not isinstance(body, dict):  # read/operation/capabilities promise a resource, not any JSON value
            raise EpicFHIRError(
                f"expected a FHIR resource (a JSON object) from {method}, got {type(body).__name__}"
            )
        return body
