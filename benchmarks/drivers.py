"""The programs the whole-process benchmark runs, one per process: ``python benchmarks/drivers.py NAME ARGS``.

Each driver is what a user's job would be: the SDK's way, or the twenty lines of anyio + httpx + orjson a user
could write by hand. A driver imports only what its own way needs (the hand-written ones never import the SDK)
and prints the number of resources it saw, so the runner can check that both ways did the same work.
``ARGS`` is one JSON object.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import httpx

Driver = Callable[[dict[str, Any]], Coroutine[Any, Any, int]]


# -- search ------------------------------------------------------------------------------------------------
async def search_raw(a: dict[str, Any]) -> int:
    import httpx

    n = 0
    headers = {"Accept": "application/fhir+json", "Authorization": f"Bearer {a['token']}"}
    async with httpx.AsyncClient(headers=headers, timeout=60.0) as http:
        url: str | None = f"{a['base']}/Observation"
        params: dict[str, str] | None = {"patient": a["patient"], "category": "vital-signs"}
        while url:
            response = await http.get(url, params=params)
            response.raise_for_status()
            bundle = orjson.loads(response.content)
            params = None
            for entry in bundle.get("entry", ()):
                if entry.get("search", {}).get("mode", "match") == "match":
                    n += 1
            url = next((link["url"] for link in bundle.get("link", ()) if link["relation"] == "next"), None)
    return n


async def search_sdk(a: dict[str, Any]) -> int:
    from epic_fhir_async import EpicFHIRClient, StaticTokenAuth

    n = 0
    async with EpicFHIRClient(a["base"], auth=StaticTokenAuth(a["token"]), **a.get("client", {})) as client:
        async for _ in client.search("Observation", patient=a["patient"], category="vital-signs"):
            n += 1
    return n


async def search_sdk_pages(a: dict[str, Any]) -> int:
    from epic_fhir_async import EpicFHIRClient, StaticTokenAuth

    n = 0
    async with EpicFHIRClient(a["base"], auth=StaticTokenAuth(a["token"]), **a.get("client", {})) as client:
        async for page in client.search("Observation", patient=a["patient"], category="vital-signs").pages():
            n += len(page.resources)
    return n


async def parse_only(a: dict[str, Any]) -> int:
    """The floor: the same page bytes parsed from memory (read from a file first), no HTTP at all."""
    n = 0
    with open(a["pages_file"], "rb") as f:
        blob = f.read()
    for body in blob.split(b"\n"):
        if body:
            bundle = orjson.loads(body)
            n += len(bundle["entry"])
            del bundle
    return n


# -- pull --------------------------------------------------------------------------------------------------
def _streams(a: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    out = []
    for patient in a["patients"]:
        for template in a["types"]:  # "Observation?category=vital-signs"
            rtype, _, query = template.partition("?")
            params = dict(p.split("=", 1) for p in query.split("&")) if query else {}
            out.append((rtype, {**params, "patient": patient, "_count": str(a["page"])}))
    return out


async def pull_raw(a: dict[str, Any]) -> int:
    import anyio
    import httpx

    total = 0
    c = a["concurrency"]
    limiter = anyio.CapacityLimiter(c)
    headers = {"Authorization": f"Bearer {a['token']}", "Accept": "application/fhir+json"}
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60.0) as http:

        async def one(rtype: str, params: dict[str, str]) -> None:
            nonlocal total
            async with limiter:
                url: str | None = f"{a['base']}/{rtype}"
                query: dict[str, str] | None = params
                while url:
                    response = await http.get(url, params=query)
                    response.raise_for_status()
                    bundle = orjson.loads(response.content)
                    total += sum(
                        1 for e in bundle.get("entry", ()) if e.get("search", {}).get("mode") == "match"
                    )
                    url = next(
                        (link["url"] for link in bundle.get("link", ()) if link["relation"] == "next"), None
                    )
                    query = None

        async with anyio.create_task_group() as tg:
            for rtype, params in _streams(a):
                tg.start_soon(one, rtype, params)
    return total


async def pull_sdk(a: dict[str, Any]) -> int:
    from epic_fhir_async import EpicFHIRClient, StaticTokenAuth

    n = 0
    templates = [f"{t}{'&' if '?' in t else '?'}_count={a['page']}" for t in a["types"]]
    async with (
        EpicFHIRClient(a["base"], auth=StaticTokenAuth(a["token"]), **a.get("client", {})) as client,
        client.pull(a["patients"], templates, concurrency=a["concurrency"], expand=False) as stream,
    ):
        async for _ in stream:
            n += 1
    return n


# -- bulk --------------------------------------------------------------------------------------------------
async def raw_ndjson_file(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    """One file: an httpx stream, bytes split by hand, ``orjson.loads`` per line (also bench_bulk's)."""
    n = 0
    async with http.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        tail = b""
        async for chunk in response.aiter_bytes():
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                if line:
                    orjson.loads(line)
                    n += 1
        if tail.strip():
            orjson.loads(tail)
            n += 1
    return n


async def bulk_raw(a: dict[str, Any]) -> int:
    """Like the SDK's driver: one status poll (the export is complete), then the manifest's files in turn."""
    import httpx

    headers = {"Authorization": f"Bearer {a['token']}", "Accept": "application/fhir+ndjson"}
    async with httpx.AsyncClient(timeout=60.0) as http:
        status = await http.get(a["status_url"], headers={**headers, "Accept": "application/json"})
        status.raise_for_status()
        manifest = orjson.loads(status.content)
        urls = [str(httpx.URL(a["status_url"]).join(f["url"])) for f in manifest["output"]]
        return sum([await raw_ndjson_file(http, url, headers) for url in urls])


async def bulk_sdk(a: dict[str, Any]) -> int:
    from epic_fhir_async import EpicFHIRClient, StaticTokenAuth

    n = 0
    async with EpicFHIRClient(a["base"], auth=StaticTokenAuth(a["token"]), **a.get("client", {})) as client:
        job = client.bulk_export_job(a["status_url"])
        await job.wait()  # one poll: the export is complete
        async for _ in job.resources(concurrency=1):
            n += 1
    return n


# -- import ------------------------------------------------------------------------------------------------
async def import_sdk(a: dict[str, Any]) -> int:
    import epic_fhir_async  # noqa: F401

    return 0


async def import_httpx(a: dict[str, Any]) -> int:
    import httpx  # noqa: F401

    return 0


DRIVERS: dict[str, Driver] = {
    f.__name__: f
    for f in (
        search_raw,
        search_sdk,
        search_sdk_pages,
        parse_only,
        pull_raw,
        pull_sdk,
        bulk_raw,
        bulk_sdk,
        import_sdk,
        import_httpx,
    )
}


def main() -> None:
    name, args = sys.argv[1], orjson.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    driver = DRIVERS[name]
    if name.startswith("import_") or name == "parse_only":
        import asyncio

        print(asyncio.run(driver(args)))
        return
    import anyio

    print(anyio.run(driver, args, backend=args.get("backend", "asyncio")))


if __name__ == "__main__":
    main()
