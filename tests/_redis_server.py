"""A real ``redis-server`` (Debian's package; .ci/run installs it) on a free loopback port, without
persistence, for the fleet's shared state and the web app's sessions. The fixtures ``redis_url`` and
``redis_db`` in tests/conftest.py use it; without the binary they skip, except under CI (``CI=true``), where
they fail.

It speaks to the server over a plain socket: the ``redis`` package is an extra, and the tests that need it
skip on their own.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ._processes import free_port, missing, stop

DATABASES = 16  # Redis's default count; database 0 is left alone


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    """``redis://127.0.0.1:<port>`` of a redis-server started here and stopped when the context ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop(process)


def emptied(url: str, db: int) -> str:
    """Empty database ``db`` of the server at ``url`` (``redis://127.0.0.1:<port>``) and return its URL."""
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as s:
        s.sendall(f"SELECT {db}\r\nFLUSHDB\r\n".encode())
        answer = b""
        while answer.count(b"\r\n") < 2 and (chunk := s.recv(64)):
            answer += chunk
    assert answer == b"+OK\r\n+OK\r\n", answer
    return f"{url}/{db}"
