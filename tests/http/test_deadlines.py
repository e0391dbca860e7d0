"""Every request has a deadline (the client's ``timeout``): connect, headers and body together.

httpx's timeouts apply to each socket read, so a server that sends a byte every 50 ms never trips them. Here a
raw-socket server on 127.0.0.1 trickles the body, trickles the headers, or floods ``102 Processing`` lines:
each ends in :class:`RequestTimeout` within the deadline, on asyncio and trio (and on the aiohttp transport);
retries add up to ``max_attempts * timeout + max_total_wait`` at most; a streamed body must keep a minimum
pace; and the deadline, like a caller's cancellation, leaves no socket open and no task running.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

from epic_fhir_async import EpicFHIRClient, RequestTimeout, RetryPolicy, StaticTokenAuth
from epic_fhir_async._config import DEFAULT_TIMEOUT, MIN_STREAM_BYTES_PER_SECOND
from epic_fhir_async._http import DeadlineExceeded
from epic_fhir_async._retry import total_bound
from epic_fhir_async.auth import ClientSecretAuth
from tests.http.rawserver import Connection, RawRequest, RawServer, head, raw_server, running_tasks

from ..conftest import fast_sdk_retries

pytestmark = pytest.mark.anyio

PATH = "/api/FHIR/R4"
TIMEOUT = 1.0
SLACK = 1.0  # scheduling on a busy machine; the deadline itself is exact
JSON = {"Content-Type": "application/fhir+json"}


def _client(server: RawServer, backend: str = "httpx", **options: object) -> EpicFHIRClient:
    options.setdefault("retry", RetryPolicy(max_attempts=1))
    options.setdefault("timeout", TIMEOUT)
    return EpicFHIRClient(
        server.url + PATH,
        auth=StaticTokenAuth("tok-" + "s" * 40),
        http_backend=backend,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


async def trickled_body(conn: Connection, request: RawRequest) -> None:
    body = b'{"resourceType": "Patient", "id": "p", "note": "' + b"a" * 100_000 + b'"}'
    await conn.send(head(200, {**JSON, "Content-Length": str(len(body))}))
    await conn.trickle(body, every=0.05)


async def trickled_head(conn: Connection, request: RawRequest) -> None:
    await conn.trickle(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nX-Slow: " + b"a" * 10_000, every=0.05
    )


async def trickled_error_body(conn: Connection, request: RawRequest) -> None:
    body = b'{"resourceType": "OperationOutcome", "issue": [' + b" " * 100_000 + b"]}"
    await conn.send(head(503, {**JSON, "Content-Length": str(len(body))}))
    await conn.trickle(body, every=0.05)


async def processing_flood(conn: Connection, request: RawRequest) -> None:
    while True:
        await conn.send(b"HTTP/1.1 102 Processing\r\n\r\n")
        await anyio.sleep(0.1)


async def _no_task_left(before: int) -> None:
    with anyio.move_on_after(2.0):
        while running_tasks() > before:
            await anyio.sleep(0.01)
    assert running_tasks() == before


@pytest.mark.parametrize(
    "respond",
    [trickled_body, trickled_head, processing_flood, trickled_error_body],
    ids=["body", "headers", "102-flood", "error-body"],
)
async def test_a_trickling_answer_ends_within_the_deadline(respond: object) -> None:
    async with raw_server(respond) as server:  # type: ignore[arg-type]
        tasks = running_tasks()
        async with _client(server) as client:
            started = anyio.current_time()
            with pytest.raises(RequestTimeout, match=f"did not complete within {TIMEOUT:g} s"):
                await client.read("Patient", "p")
            elapsed = anyio.current_time() - started
        assert TIMEOUT <= elapsed < TIMEOUT + SLACK
        await server.until_closed()  # the client closed the socket it was reading from
        await _no_task_left(tasks)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("respond", [trickled_body, trickled_head], ids=["body", "headers"])
async def test_the_aiohttp_transport_has_the_same_deadline(respond: object) -> None:
    async with raw_server(respond) as server, _client(server, "aiohttp") as client:  # type: ignore[arg-type]
        started = anyio.current_time()
        with pytest.raises(RequestTimeout):
            await client.read("Patient", "p")
        assert anyio.current_time() - started < TIMEOUT + SLACK
    await server.until_closed()


async def test_retries_of_a_request_that_keeps_stalling_add_up_to_the_stated_bound() -> None:
    timeout = 0.5
    policy = RetryPolicy(max_attempts=3, backoff_base=0.1, backoff_max=0.1, jitter=0.0, max_total_wait=0.5)
    async with raw_server(trickled_body) as server:
        async with _client(server, retry=policy, timeout=timeout) as client:
            started = anyio.current_time()
            with pytest.raises(RequestTimeout):
                await client.read("Patient", "p")
            elapsed = anyio.current_time() - started
        await server.until_closed()
    assert server.connections == 3  # every attempt, each cut at its deadline
    assert policy.max_attempts * timeout <= elapsed <= total_bound(policy, timeout) + SLACK


async def test_the_default_deadline_is_documented_and_bounded() -> None:
    client = EpicFHIRClient("https://fhir.example.org/api/FHIR/R4")
    assert client.timeout == DEFAULT_TIMEOUT == 60.0
    # The README states the bound of one call with the default policy: 5 attempts of 60 s and 120 s of waits.
    assert total_bound(RetryPolicy(), client.timeout) == 420.0
    await client.aclose()


async def test_a_token_request_that_trickles_ends_within_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast_sdk_retries(monkeypatch, 0.0)  # the token request is tried twice: no backoff between
    async with raw_server(trickled_body) as server:
        auth = ClientSecretAuth("app", "s3cret-value-123", token_url=server.url + "/oauth2/token")
        async with EpicFHIRClient(server.url + PATH, auth=auth, timeout=TIMEOUT) as client:
            started = anyio.current_time()
            with pytest.raises(RequestTimeout, match="token request to"):
                await client.read("Patient", "p")
            assert anyio.current_time() - started < 2 * TIMEOUT + SLACK
        await server.until_closed()
    assert len(server.requests) == 2  # one retry with a fresh form, each attempt bounded


async def test_a_streamed_body_must_keep_a_minimum_pace() -> None:
    # A stream (a bulk file, client.stream) may take longer than any fixed deadline, but not trickle.
    async def slow_file(conn: Connection, request: RawRequest) -> None:
        await conn.send(head(200, {"Content-Type": "application/fhir+ndjson"}))
        await conn.trickle(b'{"resourceType": "Patient"}\n' * 1000, every=0.05, size=8)

    window = 0.5
    got: list[bytes] = []

    async def read(client: EpicFHIRClient) -> None:
        async with client.stream("GET", "Binary/b") as response:
            async for chunk in response.aiter_bytes():
                got.append(chunk)

    async with raw_server(slow_file) as server, _client(server, timeout=window) as client:
        started = anyio.current_time()
        pace = int(MIN_STREAM_BYTES_PER_SECOND * window)
        with pytest.raises(DeadlineExceeded, match=f"fewer than {pace} bytes in {window:g} s"):
            await read(client)
        assert anyio.current_time() - started < window + SLACK
        assert 0 < len(b"".join(got)) < pace
    await server.until_closed()


async def test_a_streamed_body_at_a_fair_pace_is_not_cut() -> None:
    # 24 KB every 0.1 s is well over 1 KiB/s: the stream runs past its window (timeout) and completes.
    line = b'{"resourceType": "Patient", "id": "' + b"x" * 80 + b'"}\n'

    async def fair_file(conn: Connection, request: RawRequest) -> None:
        await conn.send(head(200, {"Content-Type": "application/fhir+ndjson"}))
        for _ in range(12):
            await conn.send(line * 200)
            await anyio.sleep(0.1)

    async with raw_server(fair_file) as server, _client(server, timeout=0.5) as client:
        started = anyio.current_time()
        async with client.stream("GET", "Binary/b") as response:
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
        assert anyio.current_time() - started > 0.5
    assert body == line * 200 * 12
    await server.until_closed()


async def test_a_cancelled_request_leaves_no_socket_and_no_task() -> None:
    async with raw_server(trickled_body) as server:
        tasks = running_tasks()
        async with _client(server, timeout=30.0) as client:
            with anyio.move_on_after(0.3) as scope:
                await client.read("Patient", "p")
            assert scope.cancelled_caught
            await server.until_closed()  # at once, not when the client is closed
        await _no_task_left(tasks)


def test_deadline_exceeded_is_an_httpx_timeout() -> None:
    # So that every loop that retries timeouts (bulk files, the transport) retries it, and the session maps it
    # to RequestTimeout like any other timeout.
    request = httpx.Request("GET", "https://fhir.example.org/x")
    assert isinstance(DeadlineExceeded(1.0, request=request), httpx.TimeoutException)


async def test_a_callers_own_http_client_gets_one_deadline_per_request() -> None:
    # No RetryTransport of ours underneath: the session bounds the whole request (send, body) itself.
    async with raw_server(trickled_body) as server, httpx.AsyncClient() as http:
        client = EpicFHIRClient(
            server.url + PATH, auth=StaticTokenAuth("t" * 20), http_client=http, retry=False, timeout=TIMEOUT
        )
        started = anyio.current_time()
        with pytest.raises(RequestTimeout, match=f"did not complete within {TIMEOUT:g} s"):
            await client.read("Patient", "p")
        assert anyio.current_time() - started < TIMEOUT + SLACK
        await server.until_closed()
