"""Reading a response body with a size limit, so a hostile or broken server cannot exhaust memory.

The limit applies to the *decoded* body (after gzip/deflate), so a small compressed bomb is caught as well as
a huge plain body; a ``Content-Length`` above the limit fails before anything is read. See SECURITY.md.
"""

from __future__ import annotations

import httpx

from ._errors import ResponseTooLarge, redact_url

__all__ = ["read_limited", "too_large"]


def too_large(response: httpx.Response, limit: int, what: str = "response body") -> ResponseTooLarge:
    request = response.request
    return ResponseTooLarge(
        f"the {what} of {request.method} {redact_url(request.url)} is larger than {limit} bytes; raise the "
        "limit (EpicFHIRClient(max_response_bytes=...)) only for a server you trust",
        limit=limit,
    )


async def read_limited(response: httpx.Response, limit: int | None) -> None:
    """``await response.aread()``, but raise :class:`ResponseTooLarge` beyond ``limit`` bytes (None: no limit).

    On any error the response is closed (its connection goes back to the pool or is dropped).
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
        raise too_large(response, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                break
            chunks.append(chunk)
    except BaseException:
        await response.aclose()
        raise
    if size > limit:
        await response.aclose()
        raise too_large(response, limit)
    # What Response.aread() itself does once the body is in: later reads return it without a stream.
    response._content = b"".join(chunks)
