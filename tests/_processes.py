"""For the tests that run real programs (Chromium, redis-server, tmux, the sandbox in a subprocess): the rule
for a program that is not installed, a free loopback port, and stopping a process that was started."""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any, NoReturn

import pytest


def missing(what: str) -> NoReturn:
    """Skip locally; fail under CI (``CI=true``), where .ci/run installs what the test needs."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test: {what}")
    pytest.skip(what)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server to start on, or a connection to fail)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not exited after ``timeout`` seconds; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
