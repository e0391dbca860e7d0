"""The optional aiohttp transport (``pip install 'epic-fhir-async[fast]'``): httpx's API over aiohttp.

aiohttp's HTTP/1.1 client costs less Python per request than httpcore's (the issue that made this an option
measured 0.80x the CPU at pages of 100), so it helps most with many small pages. It runs on asyncio only.
Everything above the transport is the same code on both: the retrying transport, the size limits (bodies are
decoded by httpx, not aiohttp, so a compressed body is measured decoded), the origin rules and redirects
(aiohttp is told not to follow any), the deadlines and the typed errors.
"""

from __future__ import annotations

import httpx
import sniffio

from ._errors import ConfigurationError

__all__ = ["aiohttp_transport"]

_ASYNCIO_ONLY = "http_backend='aiohttp' runs on asyncio only; under trio use the default http_backend='httpx'"


def _check_asyncio() -> None:
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return  # built outside an event loop: checked again on the first request
    if library != "asyncio":
        raise ConfigurationError(_ASYNCIO_ONLY)


class _AsyncioOnly(httpx.AsyncBaseTransport):
    """aiohttp's transport, refusing to run under another event loop with a message that says what to do."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _check_asyncio()
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def aiohttp_transport(*, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """The aiohttp-backed transport, or :class:`ConfigurationError` saying how to install it."""
    _check_asyncio()
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:
        raise ConfigurationError(
            "http_backend='aiohttp' needs the fast extra: pip install 'epic-fhir-async[fast]'"
        ) from None
    return _AsyncioOnly(AiohttpTransport(limits=limits))
