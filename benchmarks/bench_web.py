"""Web apps: what a per-user view of one client costs per request, against reusing one client.

A web app serves many users from one process; each request needs the signed-in user's token. Compared, per
request (``GET Patient/<id>`` answered in memory by ``httpx.MockTransport``, so the numbers are the SDK's own
CPU, not a network):

* ``one client``: the baseline, a single client and a single auth reused (what a one-user script does);
* ``client.with_auth(auth)``: a view of the app's one client bound to this request's auth (the way to do it);
* ``SmartSessions.auth + with_auth``: the whole per-request path of examples/fastapi_app.py: the user's
  token set loaded from the in-memory store, their SmartAuth built, a view made;
* ``new client per request``: ``EpicFHIRClient(..., http_client=shared, retry=False)`` built and closed per
  request (what the example did before; no retries and no 429 pause either).

Printed: microseconds per request (median of rounds) and the overhead over the baseline; and the cost of
making a view alone. Target: a view adds a few microseconds, well under 5 % of a request.

    python -m benchmarks web            # or: python -m benchmarks web -- --quick
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio
import httpx

from epic_fhir_async import EpicFHIRClient, SmartLaunch, SmartTokenSet, StaticTokenAuth
from epic_fhir_async.auth import InMemoryTokenSetStore, SmartSessions, TokenCipher

NAME = "web"
BASE = "https://fhir.example.org/api/FHIR/R4"
TOKEN = "a-bearer-token-of-realistic-length-" + "x" * 100
BODY = b'{"resourceType":"Patient","id":"p1","name":[{"family":"Lopez","given":["Camila"]}]}'


def handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=BODY, headers={"Content-Type": "application/fhir+json"})


async def measure(
    variants: dict[str, Callable[[], Awaitable[None]]], requests: int, rounds: int
) -> dict[str, float]:
    """Median over ``rounds`` of the microseconds one call of each variant takes. The rounds interleave the
    variants, so a neighbour's load on a shared machine hits them all alike."""
    for work in variants.values():  # warm up
        for _ in range(min(requests, 200)):
            await work()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, work in variants.items():
            start = time.perf_counter()
            for _ in range(requests):
                await work()
            samples[name].append((time.perf_counter() - start) / requests * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


async def run(requests: int, rounds: int) -> None:
    transport = httpx.MockTransport(handler)
    async with (
        EpicFHIRClient(BASE, transport=transport, auth=StaticTokenAuth(TOKEN)) as single,
        EpicFHIRClient(BASE, transport=transport) as app_client,
        httpx.AsyncClient(transport=transport) as shared,
    ):

        async def reuse() -> None:
            await single.read("Patient", "p1")

        async def view() -> None:
            async with app_client.with_auth(StaticTokenAuth(TOKEN)) as fhir:
                await fhir.read("Patient", "p1")

        launch = SmartLaunch(
            BASE,
            client_id="web",
            redirect_uri="https://app.example.org/callback",
            client_secret="secret",
            http_client=app_client.http,
        )
        store = InMemoryTokenSetStore()
        sessions = SmartSessions(launch, store, cipher=TokenCipher(TokenCipher.generate_key()))
        session_id = "s" * 43
        now = time.time()
        await store.save(
            session_id,
            SmartTokenSet(
                access_token=TOKEN,
                expires_at=now + 3600,
                issued_at=now,
                client_id="web",
                token_url="https://fhir.example.org/oauth2/token",
                fhir_base=BASE,
                refresh_token="r" * 64,
                patient="p1",
            ),
        )

        async def session_view() -> None:
            auth = await sessions.auth(session_id)
            async with app_client.with_auth(auth) as fhir:
                await fhir.read("Patient", "p1")

        async def new_client() -> None:
            async with EpicFHIRClient(
                BASE, auth=StaticTokenAuth(TOKEN), http_client=shared, retry=False
            ) as fhir:
                await fhir.read("Patient", "p1")

        results = await measure(
            {
                "one client": reuse,
                "client.with_auth(auth)": view,
                "SmartSessions.auth + with_auth": session_view,
                "new client per request": new_client,
            },
            requests,
            rounds,
        )
        auth = StaticTokenAuth(TOKEN)
        views = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(requests):
                app_client.with_auth(auth)
            views.append((time.perf_counter() - start) / requests * 1e6)
        view_alone = statistics.median(views)

    base = results["one client"]
    print(f"{requests} requests x {rounds} rounds, median per request (MockTransport: the SDK's CPU only)")
    for name, micros in results.items():
        extra = "" if name == "one client" else f"  ({micros - base:+.1f} us, {micros / base - 1:+.1%})"
        print(f"  {name:<32} {micros:8.1f} us{extra}")
    print(f"  making a view alone: {view_alone:.2f} us")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="500 requests x 3 rounds")
    args = parser.parse_args(argv)
    requests, rounds = (500, 3) if args.quick else (args.requests, args.rounds)
    anyio.run(run, requests, rounds)


if __name__ == "__main__":
    main()
