"""Fleet pull throughput: resources per second with 1 and 2 local Dask workers on the same pull.

    python -m benchmarks fleet [-- --patients 600 --page 100 --quick]

The server is not the bottleneck: a bare asyncio HTTP/1.1 server in its own process answers every search
with a page rendered once at start-up (``--page`` resources, Epic-like shapes from the sandbox's dataset,
about 1.5 KB each) and the token endpoint with a fixed token; it parses the request line and headers and
writes the bytes, nothing else. What is measured is the workers' work: TLS-free HTTP, JSON decoding, the
shard sinks' NDJSON writes. Printed beside each run: the token requests the server received and its request
rate. With ``redis-server`` on the PATH, the workers share their token through a Redis started here (one
token request per run); without it, each worker asks for its own.

The figure to look at is the ratio: the pull is CPU-bound in each worker, so two workers should approach
twice one worker's rate on a machine with two free cores (the target on the 2-core reference machine is
>= 1.5x). Other processes on the machine (the server, the Dask scheduler, anything else running) take
their share of the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

TYPES = ("Condition", "Observation", "Encounter")


# -- the server (child process) ------------------------------------------------------------------------------


def _pages(size: int) -> dict[str, bytes]:
    from epic_fhir_async.sandbox._data import build_dataset

    data = build_dataset(seed=1, patients=200)
    pages: dict[str, bytes] = {}
    for rtype in (*TYPES, "Patient"):
        pool = list(data.resources[rtype].values())
        entries = [{"resource": pool[i % len(pool)], "search": {"mode": "match"}} for i in range(size)]
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": size, "entry": entries}
        pages[rtype] = orjson.dumps(bundle)
    return pages


def _response(body: bytes, content_type: bytes = b"application/fhir+json") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (content_type, len(body))
    return head + body


async def _serve(conn: Any, page: int) -> None:
    pages = {rtype: _response(body) for rtype, body in _pages(page).items()}
    token = _response(
        orjson.dumps({"access_token": "bench-token", "token_type": "Bearer", "expires_in": 3600}),
        b"application/json",
    )
    stats = {"fhir": 0, "token": 0, "since": time.monotonic(), "first": 0.0, "last": 0.0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, _, rest = head.partition(b"\r\n")
                method, path, _ = line.split(b" ", 2)
                length = 0
                for header in rest.split(b"\r\n"):
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                now = time.monotonic()
                if path.startswith(b"/__stats"):
                    if method == b"DELETE":
                        stats.update(fhir=0, token=0, first=0.0, last=0.0)
                    writer.write(_response(orjson.dumps(stats), b"application/json"))
                elif path.endswith(b"/token"):
                    stats["token"] += 1
                    writer.write(token)
                else:
                    stats["fhir"] += 1
                    stats["first"] = stats["first"] or now
                    stats["last"] = now
                    rtype = path.split(b"/R4/", 1)[-1].split(b"?", 1)[0].decode()
                    writer.write(pages.get(rtype, pages["Patient"]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
    conn.send(server.sockets[0].getsockname()[1])
    async with server:
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until the parent says stop


def _server_main(conn: Any, page: int) -> None:
    asyncio.run(_serve(conn, page))


def _stats(port: int, *, reset: bool = False) -> dict[str, Any]:
    import httpx

    method = "DELETE" if reset else "GET"
    response = httpx.request(method, f"http://127.0.0.1:{port}/__stats", timeout=10)
    data: dict[str, Any] = orjson.loads(response.content)
    return data


# -- Redis (optional) ------------------------------------------------------------------------------------------


def _start_redis() -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.terminate()
    return None


# -- the benchmark ---------------------------------------------------------------------------------------------


def _run(port: int, key: Path, workers: int, patients: int, redis: str | None, out: Path) -> dict[str, Any]:
    from epic_fhir_async.fleet import ClientSpec, KeyFileAuth, fleet_pull

    base = f"http://127.0.0.1:{port}/interconnect-fhir-oauth/api/FHIR/R4"
    token_url = f"http://127.0.0.1:{port}/interconnect-fhir-oauth/oauth2/token"
    spec = ClientSpec(base, auth=KeyFileAuth("bench-fleet", str(key), token_url=token_url))
    ids = [f"eBench{n:05d}" for n in range(patients)]
    if redis is not None:  # each run starts without a shared token: it shows its own token requests
        import redis as redis_client

        with redis_client.Redis.from_url(redis) as connection:
            connection.flushdb()
    _stats(port, reset=True)
    started = time.perf_counter()
    result = fleet_pull(
        spec,
        ids,
        list(TYPES),
        out,
        workers=workers,
        shards=4 * workers,
        concurrency=8,
        expand=False,
        redis=redis,
    )
    wall = time.perf_counter() - started
    server = _stats(port)
    resources = sum(result.counts.values())
    pulling = result.progress.elapsed
    span = max(server["last"] - server["first"], 1e-9)
    return {
        "workers": workers,
        "resources": resources,
        "pulling": pulling,
        "wall": wall,
        "rate": resources / pulling,
        "token_requests": server["token"],
        "server_rps": server["fhir"] / span,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=600, help="patients (3 searches each)")
    parser.add_argument("--page", type=int, default=100, help="resources per pre-rendered page")
    parser.add_argument("--quick", action="store_true", help="a smaller pull (200 patients)")
    args = parser.parse_args(argv)
    patients = 200 if args.quick else args.patients

    from epic_fhir_async.auth import generate_private_key, private_key_pem

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_server_main, args=(child, args.page), daemon=True)
    server.start()
    redis = _start_redis()
    scratch = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        port = parent.recv()
        key = scratch / "key.pem"
        key.write_bytes(private_key_pem(generate_private_key("ES256")))
        os.chmod(key, 0o600)
        redis_url = redis[1] if redis else None
        print(
            f"{patients} patients x {len(TYPES)} searches, {args.page} resources a page, "
            f"Redis {'on' if redis_url else 'off (redis-server not found)'}, {os.cpu_count()} CPUs"
        )
        rows = []
        for workers in (1, 2):
            row = _run(port, key, workers, patients, redis_url, scratch / f"out-{workers}")
            rows.append(row)
            print(
                f"  {workers} worker(s): {row['resources']:,} resources in {row['pulling']:.2f} s pulling "
                f"({row['wall']:.2f} s with cluster start-up and merge): {row['rate']:,.0f} resources/s; "
                f"token requests {row['token_requests']}, server {row['server_rps']:,.0f} requests/s"
            )
        print(f"  2 workers / 1 worker: {rows[1]['rate'] / rows[0]['rate']:.2f}x")
    finally:
        parent.send("stop")
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()
        if redis is not None:
            redis[0].terminate()
            redis[0].wait(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
