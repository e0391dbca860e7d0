"""A hostile HTTP/1.1 server on 127.0.0.1 for tests: raw bytes at any pace, on asyncio and on trio (anyio).

Each connection carries one request; the test's ``respond(connection, request)`` writes whatever bytes it likes
(a trickle, an endless stream of ``102 Processing``, a gzip bomb) while a watcher reads the socket: when the
client closes its end, ``respond`` is cancelled and the connection counted closed; when ``respond`` returns,
the server closes the connection (``Connection: close``). ``server.until_closed()``
then proves that the client let go of every socket it opened, and :func:`running_tasks` that it left no task.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import anyio
import anyio.abc
import sniffio

__all__ = [
    "Connection",
    "RawRequest",
    "RawServer",
    "gzip_bomb",
    "head",
    "raw_server",
    "running_tasks",
]


@dataclass
class RawRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class Connection:
    """The server's side of one connection: ``send`` bytes, or ``trickle`` them."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self._stream = stream
        self.sent = 0

    async def send(self, data: bytes) -> None:
        await self._stream.send(data)
        self.sent += len(data)

    async def trickle(self, data: bytes, *, every: float, size: int = 1) -> None:
        """``data`` in pieces of ``size`` bytes, one every ``every`` seconds."""
        for start in range(0, len(data), size):
            await self.send(data[start : start + size])
            await anyio.sleep(every)


Respond = Callable[[Connection, RawRequest], Awaitable[None]]


def head(status: int, headers: dict[str, str] | None = None, *, reason: str = "X") -> bytes:
    """A response head; ``Connection: close`` is added (one request per connection)."""
    lines = [f"HTTP/1.1 {status} {reason}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def gzip_bomb(decoded: int, fill: bytes = b"\0") -> bytes:
    """A gzip body of ``decoded`` bytes of ``fill`` (about a thousandth of that on the wire)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    block = fill * (1024 * 1024 // len(fill))
    parts = []
    for start in range(0, decoded, len(block)):
        parts.append(compressor.compress(block[: decoded - start]))
    parts.append(compressor.flush())
    return b"".join(parts)


@dataclass
class RawServer:
    respond: Respond
    url: str = ""
    requests: list[RawRequest] = field(default_factory=list)
    connections: int = 0
    open: int = 0

    async def until_closed(self, within: float = 5.0) -> None:
        """Wait until every connection is closed (the client closed its end); fail after ``within`` s."""
        with anyio.move_on_after(within):
            while self.open:
                await anyio.sleep(0.01)
        assert self.open == 0, f"{self.open} connection(s) still open: the client kept its socket"

    async def serve(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        self.open += 1
        try:
            async with stream:
                request = await _read_request(stream)
                if request is None:
                    return
                self.requests.append(request)
                async with anyio.create_task_group() as tg:

                    async def watch() -> None:
                        # The client sends nothing more on a Connection: close exchange: EOF or a reset
                        # means it let go of the socket.
                        try:
                            while await stream.receive():
                                pass
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            pass
                        tg.cancel_scope.cancel()

                    async def answer() -> None:
                        # The whole answer is out: close (a body without a length ends there).
                        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                            await self.respond(Connection(stream), request)
                        tg.cancel_scope.cancel()

                    tg.start_soon(watch)
                    tg.start_soon(answer)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
            pass
        finally:
            self.open -= 1


async def _read_request(stream: anyio.abc.SocketStream) -> RawRequest | None:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    first, *lines = head_bytes.decode("latin-1").split("\r\n")
    method, target, _ = first.split(" ", 2)
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        body += await stream.receive()
    return RawRequest(method, target, headers, body)


@asynccontextmanager
async def raw_server(respond: Respond) -> AsyncIterator[RawServer]:
    """Serve ``respond`` on 127.0.0.1 (a free port) for the block; ``server.url`` is ``http://127.0.0.1:N``."""
    server = RawServer(respond)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server.url = f"http://127.0.0.1:{port}"
    async with listener, anyio.create_task_group() as tg:

        async def accept(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            await listener.serve(server.serve, tg)

        await tg.start(accept)  # running before the block starts, so task counts taken there are stable
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


def running_tasks() -> int:
    """Tasks alive in the current event loop (asyncio or trio), the caller's included."""
    if sniffio.current_async_library() == "trio":
        import trio

        return int(trio.lowlevel.current_statistics().tasks_living)
    import asyncio

    return len(asyncio.all_tasks())
