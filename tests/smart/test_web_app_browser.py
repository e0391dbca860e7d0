"""examples/fastapi_app.py as it runs in production: uvicorn with two worker processes on 127.0.0.1, the users'
sessions in a real redis-server, the sandbox served on 127.0.0.1 (the example's ``serve`` mode), and a real
browser (headless Chromium) signing in through the sandbox's login page.

Then the signed-in browser's cookie is sent on new connections until both workers have answered (each says
which it is in ``X-Worker-Pid``): the other worker serves the user without a new sign-in. Last, the access
token expires (the sandbox's lifetime is a few seconds) and requests hit both workers at once: one
refresh-token grant in all (the sandbox's own count), every request answered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .._chromium import chromium
from .._processes import free_port

pytest.importorskip("fastapi", reason="examples/fastapi_app.py needs FastAPI")
pytest.importorskip("uvicorn", reason="the example's serve mode runs uvicorn")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app.py"
CAMILA = "erXuFYUfucBZaryVksYEcMg3"
LIFETIME = 6  # seconds: the sandbox's access tokens expire during the test

pytestmark = pytest.mark.slow


@dataclass
class Served:
    app: str  # http://127.0.0.1:<port>
    sandbox: str  # the sandbox's origin
    process: subprocess.Popen[str]

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = httpx.get(f"{self.sandbox}/__sandbox/stats", timeout=5).json()
        return counts


@pytest.fixture
def served(redis_db: str, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPIC_FHIR_", "APP_", "REDIS_URL"))}
    process = subprocess.Popen(
        [
            *(sys.executable, str(EXAMPLE), "serve", "--workers", "2", "--port", str(port)),
            *("--redis", redis_db, "--token-lifetime", str(LIFETIME)),
            # A token request takes that long at least: the two workers' requests overlap while one refreshes.
            *("--latency", "0.05"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the workers are stopped with it
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not any(line.startswith("app:") for line in lines):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, f"the example did not start: {''.join(lines)}"
            time.sleep(0.05)
        sandbox = next(line for line in lines if line.startswith("sandbox:")).split()[1]
        app = f"http://127.0.0.1:{port}"
        while True:  # uvicorn's workers need a moment to import the app
            try:
                if httpx.get(f"{app}/", timeout=2).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, f"the app did not answer: {''.join(lines)}"
            time.sleep(0.1)
        url = httpx.URL(sandbox)
        yield Served(app, f"{url.scheme}://{url.netloc.decode()}", process)
    finally:
        process.send_signal(signal.SIGTERM)  # uvicorn's supervisor stops its workers
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def on_a_new_connection(app: str, session: str) -> httpx.Response:
    """A request with the browser's session cookie on a connection of its own (the kernel hands each new
    connection to one of the workers)."""
    with httpx.Client(cookies={"smart_session": session}, timeout=10) as http:
        return http.get(f"{app}/api/patient", headers={"Connection": "close"})


@pytest.mark.timeout(90)
def test_a_browser_signs_in_on_one_worker_and_the_other_serves_it_refreshing_once(
    served: Served, tmp_path: Path
) -> None:
    with chromium(tmp_path / "profile") as page:
        page.open(f"{served.app}/login")  # standalone launch: the sandbox's login page
        page.wait_for("document.querySelector('form#login') !== null")
        page.evaluate(
            """(() => {
                document.querySelector('input[name=username]').value = 'fhircamila';
                document.querySelector('input[name=password]').value = 'epicepic1';
                document.querySelector('button[name=action][value=login]').click();
            })()"""
        )
        title = page.wait_for(
            f"location.href === {served.app + '/'!r} && document.readyState === 'complete' && document.title"
        )
        landed = time.monotonic()
        assert title == "Patient: Camila Maria Lopez"
        assert "Vital sign" in page.evaluate("document.body.innerText")
        cookies = page.cookies(served.app)
    session = cookies["smart_session"]
    assert "smart_launch" not in cookies  # the sign-in state was single-use

    # Both workers serve the signed-in user, on the strength of the cookie alone.
    pids: dict[str, int] = {}
    for _ in range(60):
        response = on_a_new_connection(served.app, session)
        assert (response.status_code, response.json()) == (
            200,
            {"patient": CAMILA, "name": "Camila Maria Lopez"},
        )
        pid = response.headers["x-worker-pid"]
        pids[pid] = pids.get(pid, 0) + 1
        if len(pids) == 2:
            break
    assert len(pids) == 2, f"one worker answered every connection: {pids}"
    assert served.stats().get("refresh_exchanges", 0) == 0
    assert time.monotonic() - landed < LIFETIME * 0.9 - 1, "too slow to test the expiry below"

    # The token expires; requests on both workers at once. One keep-alive connection to each worker (found by
    # requests without the cookie, which touch no session), then the user's requests over both together.
    time.sleep(max(0.0, landed + LIFETIME + 0.3 - time.monotonic()))
    pinned: dict[str, httpx.Client] = {}
    try:
        for _ in range(60):
            http = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=1))
            pid = http.get(f"{served.app}/api/patient").headers["x-worker-pid"]
            if pid in pinned:
                http.close()
            else:
                pinned[pid] = http
            if len(pinned) == 2:
                break
        assert len(pinned) == 2, "one worker answered every connection"
        answers: list[tuple[str, httpx.Response]] = []

        def request(pid: str) -> None:
            response = pinned[pid].get(
                f"{served.app}/api/patient", headers={"Cookie": f"smart_session={session}"}
            )
            answers.append((pid, response))

        threads = [threading.Thread(target=request, args=(pid,)) for pid in pinned for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for http in pinned.values():
            http.close()
    assert len(answers) == 6
    for pid, response in answers:
        assert response.status_code == 200, response.text
        assert response.json()["patient"] == CAMILA
        assert response.headers["x-worker-pid"] == pid  # both workers served the expired session
    stats = served.stats()
    assert stats["refresh_exchanges"] == 1
    assert stats["code_exchanges"] == 1
