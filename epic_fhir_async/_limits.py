"""Reading a response body with a size limit, so a hostile or broken server cannot exhaust memory.

The limit applies to the *decoded* body (after gzip/deflate), so a small compressed bomb is caught as well as
a huge plain body; a ``Content-Length`` above the limit fails before anything is read. See SECURITY.md.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import cast

import httpx

from ._errors import ResponseTooLarge, redact_url

__all__ = ["read_limited", "too_large"]


def too_large(request: httpx.Request, limit: int, what: str = "response body") -> ResponseTooLarge:
    return ResponseTooLarge(
        f"the {what} of {request.method} {redact_url(request.url)} is larger than {limit} bytes; raise the "
        "limit (EpicFHIRClient(max_response_bytes=...)) only for a server you trust",
        limit=limit,
    )


async def read_limited(
    response: httpx.Response, limit: int | None, *, request: httpx.Request | None = None
) -> None:
    """``await response.aread()``, but raise :class:`ResponseTooLarge` beyond ``limit`` bytes (None: no limit).

    ``request`` names the request in the error (a transport's response does not know it yet). On any error
    the response is closed (its connection goes back to the pool or is dropped).
    """
    try:
        response.content  # noqa: B018 - already read (by the retrying transport): nothing to do
        return
    except httpx.ResponseNotRead:
        pass
    if limit is None:
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        return
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        await response.aclose()
        raise too_large(request or response.request, limit)
    target = request or response.request
    chunks: list[bytes] = []
    size = 0

    def check() -> None:
        if size > limit:
            raise too_large(target, limit)

    # The limit is on the *decoded* size (a gzip bomb), counted here; the stop is raised from inside the raw
    # stream (_Checked) so every one of httpx's nested body generators ends normally: stopping from out
    # here would leave them suspended for the GC, which trio reports as a ResourceWarning.
    if isinstance(response.stream, httpx.AsyncByteStream):  # else an in-memory body, already bounded
        response.stream = _Checked(response.stream, check)
    try:
        async with aclosing(cast("AsyncGenerator[bytes, None]", response.aiter_bytes())) as body:
            async for chunk in body:
                size += len(chunk)
                if size <= limit:
                    chunks.append(chunk)
        check()  # the body ended right after the chunk that broke the limit
    except BaseException:
        await response.aclose()
        raise
    # What Response.aread() itself does once the body is in: later reads return it without a stream.
    response._content = b"".join(chunks)


class _Checked(httpx.AsyncByteStream):
    """The raw body, calling ``check`` before each chunk after the first (it raises to stop the read)."""

    def __init__(self, inner: httpx.AsyncByteStream, check: Callable[[], None]) -> None:
        self._inner = inner
        self._check = check

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = cast("AsyncGenerator[bytes, None]", self._inner.__aiter__())
        async with aclosing(chunks):
            async for chunk in chunks:
                self._check()
                yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
