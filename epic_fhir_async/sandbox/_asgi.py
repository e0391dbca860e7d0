"""The sandbox's ASGI plumbing: the in-process httpx transport, the real uvicorn server and cut connections.

The same app answers in-process (httpx's ASGI transport: no sockets, asyncio and trio) and served on a real
port. A fault that cuts a response mid-body (a test fault the emulator can inject, not a documented Epic
behaviour) closes the socket when served and raises ``httpx.RemoteProtocolError`` in-process, so client code
sees the same error either way.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

from ._http import Request, Response

__all__ = ["AsgiServer", "ConnectionDropped"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ConnectionDropped(Exception):
    """Raised by the in-process app when a fault cuts a response; the transport turns it into httpx's error."""


class _DroppingASGITransport(httpx.ASGITransport):
    """httpx's ASGI transport, turning an injected dropped connection into ``httpx.RemoteProtocolError``."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except ConnectionDropped:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body", request=request
            ) from None


class AsgiServer:
    """ASGI entry, in-process transport and ``serve()`` around :meth:`handle` (the base of ``EpicSandbox``).

    A subclass provides :meth:`handle`, ``stats``, and an ``origin`` that ``serve()`` may move to the real
    port, plus ``base_url``.
    """

    stats: collections.Counter[str]
    origin: str

    @property
    def base_url(self) -> str:
        raise NotImplementedError

    async def handle(self, request: Request) -> Response:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._asgi(scope, receive, send, served=False)

    async def _asgi(self, scope: Scope, receive: Receive, send: Send, *, served: bool) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        request = Request.from_scope(scope, b"".join(chunks))
        response = await self.handle(request)
        self.stats[f"status:{response.status}"] += 1
        try:
            await self._send_response(response, send, served)
        finally:
            # Close a streamed body's generator now, whatever happened (a fault cut, a client gone, a
            # cancellation): never leave it to the garbage collector.
            aclose = getattr(response.stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _send_response(self, response: Response, send: Send, served: bool) -> None:
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if response.stream is None:
            headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if response.stream is None:
            if response.drop_after:
                cut = response.body[: response.drop_after]
                await send({"type": "http.response.body", "body": cut, "more_body": True})
                await self._drop(served)
                return
            await send({"type": "http.response.body", "body": response.body})
            return
        if await self._send_stream(response, send, served):
            await send({"type": "http.response.body", "body": b""})

    async def _send_stream(self, response: Response, send: Send, served: bool) -> bool:
        """Send a streamed body; False when a fault cut it (the response must not be completed)."""
        assert response.stream is not None
        sent = 0
        async for chunk in response.stream:
            if response.drop_after and sent + len(chunk) >= response.drop_after:
                part = chunk[: response.drop_after - sent]
                await send({"type": "http.response.body", "body": part, "more_body": True})
                await self._drop(served)
                return False
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if response.drop_after:
            await self._drop(served)
            return False
        return True

    @staticmethod
    async def _drop(served: bool) -> None:
        # Served: returning without completing the response makes uvicorn close the socket mid-body.
        # In-process: raise, and the transport turns it into httpx.RemoteProtocolError.
        if not served:
            raise ConnectionDropped("response cut by fault injection")

    # -- running ------------------------------------------------------------------------------------------
    def transport(self) -> httpx.AsyncBaseTransport:
        """An in-process httpx transport (no sockets; works on asyncio and trio)."""
        return _DroppingASGITransport(app=self)

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run a real uvicorn server on ``host:port`` (0 = any free port); yields the FHIR base URL.

        The origin follows the real port while serving. Under trio, uvicorn (asyncio-only) runs in a worker
        thread with its own event loop.
        """
        import sniffio
        import uvicorn  # the "sandbox" extra

        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except BaseException:
            sock.close()  # a port in use must not leak the socket (ResourceWarning)
            raise
        real_port = sock.getsockname()[1]

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self._asgi(scope, receive, send, served=True)

        config = uvicorn.Config(app, log_level="critical", lifespan="off", access_log=False, log_config=None)
        server = uvicorn.Server(config)
        previous = self.origin
        # A wildcard bind is reached through loopback; URLs must name an address clients can use.
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}  # noqa: S104 - mapping a wildcard away, not binding
        shown_host = wildcard.get(host, f"[{host}]" if ":" in host else host)
        self.origin = f"http://{shown_host}:{real_port}"
        try:
            async with anyio.create_task_group() as tg:

                async def run_server() -> None:
                    if sniffio.current_async_library() == "asyncio":
                        await server.serve([sock])
                    else:
                        await anyio.to_thread.run_sync(lambda: server.run([sock]))
                    # The server stopped (Ctrl-C under the CLI): end the caller's block too.
                    tg.cancel_scope.cancel()

                tg.start_soon(run_server)
                while not server.started:
                    if server.should_exit:
                        raise RuntimeError("the sandbox server failed to start")
                    await anyio.sleep(0.01)
                try:
                    yield self.base_url
                finally:
                    server.should_exit = True
        finally:
            sock.close()
            self.origin = previous
