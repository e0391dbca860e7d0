"""Every response body the SDK reads, on every path, is bounded (SECURITY.md promise 7): FHIR reads and search
pages, error bodies, redirects, the token endpoint, discovery, the bulk kick-off, status polls, manifests,
and bulk files (their error bodies on the FHIR origin and elsewhere, and what they inflate to on disk).

The hostile answer is a gzip bomb: 100 MiB of zeros in ~100 KB, sent in 1 KiB pieces by a counting stream, so
the test sees how much of it the SDK pulled (an unbounded reader pulls all of it and inflates 100 MiB each
time). httpx.MockTransport answers here; tests/security/test_bulk_files_on_sockets.py and tests/http/ use sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import anyio.lowlevel
import httpx
import pytest

from epic_fhir_async import (
    BulkExportError,
    EpicAuth,
    EpicFHIRClient,
    NotFound,
    ResponseTooLarge,
    RetryPolicy,
    StaticTokenAuth,
    TokenRequestError,
)
from epic_fhir_async.auth import ClientSecretAuth, discover_endpoints
from epic_fhir_async.bulk import PollCadence
from tests.http.rawserver import gzip_bomb

from ..conftest import fast_sdk_retries

pytestmark = pytest.mark.anyio

BASE = "https://fhir.example.org/api/FHIR/R4"
JSON = {"content-type": "application/fhir+json"}
FAST = PollCadence(initial=0.001, maximum=0.002, min_delay=0.0)
BOMB = gzip_bomb(100 * 1024 * 1024)
#: What a bounded reader may pull of the bomb at most: the SDK's largest limit (64 MiB) inflates from ~64% of
#: it; every path below has a smaller one and pulls far less.
UNREAD = len(BOMB) // 2


class Counted(httpx.AsyncByteStream):
    """A body sent in 1 KiB pieces, counting what the reader pulled (``tally``), over every request. Each piece
    waits on the event loop first, as a socket read does."""

    def __init__(self, data: bytes, tally: list[int]) -> None:
        self.data = data
        self.tally = tally

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 1024):
            await anyio.lowlevel.checkpoint()
            self.tally.append(1024)
            yield self.data[start : start + 1024]


class Bombs:
    """Hands out bomb bodies and adds up what the SDK pulled of all of them."""

    def __init__(self) -> None:
        self.tally: list[int] = []
        self.served = 0

    @property
    def pulled(self) -> int:
        return sum(self.tally)

    def response(self, status: int, headers: dict[str, str] | None = None) -> httpx.Response:
        self.served += 1
        return httpx.Response(
            status,
            headers={**JSON, "content-encoding": "gzip", **(headers or {})},
            stream=Counted(BOMB, self.tally),
        )


def _client(
    handler: Callable[[httpx.Request], httpx.Response], auth: EpicAuth | None = None, **options: object
) -> EpicFHIRClient:
    options.setdefault("retry", RetryPolicy(max_attempts=1))
    return EpicFHIRClient(
        BASE,
        auth=auth or StaticTokenAuth("tok-" + "x" * 30),
        transport=httpx.MockTransport(handler),
        **options,  # type: ignore[arg-type]
    )


def _export(
    file: Callable[[httpx.Request], httpx.Response], file_url: str = f"{BASE}/files/1"
) -> Callable[[httpx.Request], httpx.Response]:
    """A bulk export whose kick-off and manifest are fine and whose one file answers ``file``."""

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/$export"):
            return httpx.Response(202, headers={"content-location": f"{BASE}/BulkRequest/1"})
        if request.url.path.endswith("/BulkRequest/1"):
            manifest = {
                "requiresAccessToken": True,
                "output": [{"type": "Patient", "url": file_url, "count": 1}],
                "error": [],
            }
            return httpx.Response(200, json=manifest, headers=JSON)
        return file(request)

    return route


# -- FHIR interactions -------------------------------------------------------------------------------------


async def test_a_read_stops_at_the_resource_limit() -> None:
    bombs = Bombs()
    async with _client(lambda r: bombs.response(200)) as client:
        with pytest.raises(ResponseTooLarge, match=r"max_resource_bytes"):
            await client.read("Patient", "p")
    assert bombs.pulled < len(BOMB) // 4  # 16 MiB of 100


async def test_a_search_page_stops_at_the_page_limit() -> None:
    bombs = Bombs()
    async with _client(lambda r: bombs.response(200)) as client:
        with pytest.raises(ResponseTooLarge, match=r"max_response_bytes"):
            await client.search("Patient", identifier="x").first()
    assert bombs.pulled < UNREAD + len(BOMB) // 4  # 64 MiB of 100, with the default limit


async def test_an_error_body_is_cut_and_the_error_keeps_its_type() -> None:
    bombs = Bombs()
    async with _client(lambda r: bombs.response(404)) as client:
        with pytest.raises(NotFound, match="error body over"):
            await client.read("Patient", "p")
    assert bombs.pulled < len(BOMB) // 20


async def test_a_redirect_body_is_not_read_beyond_the_error_limit() -> None:
    bombs = Bombs()

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/old"):
            return bombs.response(302, {"location": f"{BASE}/Patient/new"})
        return httpx.Response(200, json={"resourceType": "Patient", "id": "new"}, headers=JSON)

    async with _client(route) as client:
        assert (await client.read("Patient", "old"))["id"] == "new"
    assert bombs.pulled < len(BOMB) // 20


# -- auth --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 400])
async def test_a_token_answer_stops_at_its_limit(status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_sdk_retries(monkeypatch, 0.0)
    bombs = Bombs()
    auth = ClientSecretAuth("app", "s3cret-value-1234", token_url="https://fhir.example.org/oauth2/token")
    async with _client(lambda r: bombs.response(status), auth=auth):
        with pytest.raises((ResponseTooLarge, TokenRequestError)):
            await auth.get_token()
    assert bombs.pulled < len(BOMB) // 20 * bombs.served


async def test_discovery_stops_at_the_resource_limit() -> None:
    bombs = Bombs()
    async with _client(lambda r: bombs.response(200)) as client:
        with pytest.raises(ResponseTooLarge):
            await discover_endpoints(client.http, BASE)
    assert bombs.pulled < len(BOMB) // 4


# -- bulk $export ------------------------------------------------------------------------------------------


async def test_a_kickoff_body_is_read_under_a_limit() -> None:
    # The issue: a 202 with a ~1 MB gzip bomb reached 2.5 GB of memory, and the kick-off still succeeded.
    bombs = Bombs()

    def route(request: httpx.Request) -> httpx.Response:
        return bombs.response(202, {"content-location": f"{BASE}/BulkRequest/1"})

    async with _client(route) as client:
        with pytest.raises(ResponseTooLarge):
            await client.bulk_export("g", types=["Patient"], cadence=FAST)
    assert bombs.pulled < len(BOMB) // 4


async def test_a_kickoff_500_bomb_is_bounded_on_every_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    # The issue: the same body on a 500 was sent again 4 times and reached 6.1 GB.
    fast_sdk_retries(monkeypatch, 0.0)
    bombs = Bombs()
    async with _client(lambda r: bombs.response(500)) as client:
        with pytest.raises(BulkExportError):
            await client.bulk_export("g", types=["Patient"], cadence=FAST)
    assert bombs.served == 4  # the kick-off's own retries (KICKOFF_RETRY)
    assert bombs.pulled < len(BOMB) // 20 * bombs.served


async def test_a_kickoff_body_with_a_huge_content_length_is_refused_unread() -> None:
    tally: list[int] = []

    def route(request: httpx.Request) -> httpx.Response:
        headers = {**JSON, "content-location": f"{BASE}/BulkRequest/1", "content-length": str(300 * 2**20)}
        return httpx.Response(202, headers=headers, stream=Counted(b"{}" * 1000, tally))

    async with _client(route) as client:
        with pytest.raises(ResponseTooLarge):
            await client.bulk_export("g", types=["Patient"], cadence=FAST)
    assert sum(tally) == 0


@pytest.mark.parametrize("status", [202, 200], ids=["in-progress", "manifest"])
async def test_a_status_poll_stops_at_the_resource_limit(status: int) -> None:
    bombs = Bombs()

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/$export"):
            return httpx.Response(202, headers={"content-location": f"{BASE}/BulkRequest/1"})
        return bombs.response(status)

    async with _client(route) as client:
        job = await client.bulk_export("g", types=["Patient"], cadence=FAST)
        with pytest.raises(ResponseTooLarge):
            await job.wait()
    assert bombs.pulled < len(BOMB) // 4


async def test_a_same_origin_file_answering_503_bombs_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # The issue: the retrying transport read each 503 body without a limit before retrying (2.5 GB, 14 s).
    fast_sdk_retries(monkeypatch, 0.0)
    bombs = Bombs()
    policy = RetryPolicy(max_attempts=3, backoff_base=0.0, backoff_max=0.0)
    async with _client(_export(lambda r: bombs.response(503)), retry=policy) as client:
        job = await client.bulk_export("g", types=["Patient"], cadence=FAST)
        await job.wait()
        with pytest.raises(BulkExportError):
            await _drain(job)
    assert bombs.served == 3
    assert bombs.pulled < len(BOMB) // 20 * bombs.served


async def test_a_foreign_file_answering_a_500_bomb_is_bounded() -> None:
    # The issue: with allow_foreign_files=True the error body of a file elsewhere was read without a limit.
    bombs = Bombs()
    route = _export(lambda r: bombs.response(500), file_url="https://cdn.example/f/1")
    async with _client(route) as client:
        job = await client.bulk_export("g", types=["Patient"], cadence=FAST, allow_foreign_files=True)
        await job.wait()
        with pytest.raises(BulkExportError):
            await _drain(job)
    assert bombs.served == 1
    assert bombs.pulled < len(BOMB) // 20


# What a bulk file *inflates to* (a gzip bomb written to disk by download(), or streamed) is bounded too:
# tests/security/test_bulk_files_on_sockets.py, over real sockets.


async def _drain(job: object) -> None:
    async for _ in job.resources():  # type: ignore[attr-defined]
        pass
