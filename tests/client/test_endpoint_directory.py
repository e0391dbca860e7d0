"""Epic's endpoint directory: loaded from the sandbox on loopback, from a generated 10,000+ organisation
directory on disk, and from a loopback server with ETag/Last-Modified for the on-disk cache."""

from __future__ import annotations

import http.server
import logging
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.bench_directory import brands_bundle, queries
from epic_fhir_async import (
    ConfigurationError,
    EpicFHIRClient,
    EpicFHIRError,
    RequestTimeout,
    ResponseTooLarge,
    RetryPolicy,
    ServerError,
    StaticTokenAuth,
)
from epic_fhir_async.directory import DirectoryEntry, EndpointDirectory
from epic_fhir_async.sandbox import EpicSandbox

CAMILA = "erXuFYUfucBZaryVksYEcMg3"
EXTRAS = (
    ("Hôpital Saint-Éloi", "https://fhir.saint-eloi.test/FHIRProxy/api/FHIR/R4/"),
    ("Mercy Health", "https://fhir.mercy-ohio.test/FHIR/api/FHIR/R4/"),
    ("Mercy Health", "https://fhir.mercy-missouri.test/api/FHIR/R4/"),
)
NO_RETRY = RetryPolicy(max_attempts=1)


# -- the sandbox's directory, on loopback --------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/Endpoints/R4", "/Endpoints/Brands"])
async def test_sandbox_directory_finds_an_organisation_and_its_client_reads(path: str) -> None:
    sb = EpicSandbox(seed=0, patients=0, directory=EXTRAS)
    async with sb.serve() as base_url:
        directory = await EndpointDirectory.fetch(f"{sb.origin}{path}")
        (sandbox,) = directory.search("EPIC sandbox emulator")
        assert sandbox.base_url == base_url
        assert sandbox.fhir_version == "R4"
        (eloi,) = directory.search("hopital saint eloi")  # no accents, other case
        assert eloi.name == "Hôpital Saint-Éloi"
        assert eloi.base_url == "https://fhir.saint-eloi.test/FHIRProxy/api/FHIR/R4"
        async with directory.client("epic sandbox", auth=StaticTokenAuth(sb.issue_token("dir"))) as client:
            patient = await client.read("Patient", CAMILA)
    assert patient["name"][0]["family"] == "Lopez"
    assert len(directory) == 4


@pytest.mark.anyio
async def test_duplicate_names_across_brands_are_listed_and_never_guessed() -> None:
    sb = EpicSandbox(seed=0, patients=0, directory=EXTRAS)
    directory = await EndpointDirectory.fetch(f"{sb.origin}/Endpoints/Brands", transport=sb.transport())
    both = directory.search("mercy")
    assert [e.name for e in both] == ["Mercy Health", "Mercy Health"]
    assert {e.base_url for e in both} == {
        "https://fhir.mercy-ohio.test/FHIR/api/FHIR/R4",
        "https://fhir.mercy-missouri.test/api/FHIR/R4",
    }
    with pytest.raises(
        ConfigurationError, match=r"2 endpoints match 'Mercy Health'.*mercy-ohio.*entry\.client"
    ):
        directory.client("Mercy Health")
    client = directory.client(both[0])
    assert isinstance(client, EpicFHIRClient)
    await client.aclose()


# -- a large generated directory -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("directory") / "brands.json"
    path.write_bytes(orjson.dumps(brands_bundle(12_000)))
    return path


@pytest.fixture(scope="module")
def large(large_file: Path) -> EndpointDirectory:
    return EndpointDirectory.from_bytes(large_file.read_bytes(), source=str(large_file))


@pytest.mark.anyio
async def test_a_saved_directory_file_loads(large_file: Path, large: EndpointDirectory) -> None:
    loaded = await EndpointDirectory.from_file(large_file)
    assert loaded.entries == large.entries
    assert len(loaded) > 10_000
    assert loaded.source == str(large_file)
    with pytest.raises(ConfigurationError, match="max_bytes"):
        await EndpointDirectory.from_file(large_file, max_bytes=1000)


def test_search_is_case_and_accent_insensitive_on_partial_words(large: EndpointDirectory) -> None:
    names = {e.name for e in large.search("saint etien", limit=None)}
    assert names
    assert all(n.startswith("Saint-Étienne") for n in names)
    assert {e.name for e in large.search("SAINT-ÉTIEN", limit=None)} == names
    lodz = large.search("lodz", limit=None)  # "Łódź": a letter NFKD does not decompose
    assert lodz
    assert all(e.name.startswith("Łódź") for e in lodz)
    marys = large.search("st marys childr", limit=None)  # "St. Mary's Children's Hospital"
    assert marys
    assert all(e.name.startswith("St. Mary's Children's Hospital") for e in marys)
    assert large.search("children mary", limit=None) == sorted(marys, key=large.entries.index)
    assert large.search("zzzz") == []


def test_an_exact_name_comes_first_then_names_starting_with_the_query(large: EndpointDirectory) -> None:
    exact = large.entries[len(large.entries) // 2]
    name = exact.name
    found = large.search(name.upper(), limit=5)
    assert found[0].name == name
    first_word = name.split()[0]
    ranked = large.search(first_word, limit=None)
    starts = [e.name.casefold().startswith(first_word.casefold()) for e in ranked]
    assert starts == sorted(starts, reverse=True)  # every name starting with it before any other


def test_r4_is_picked_where_dstu2_and_stu3_stand_beside_it(large: EndpointDirectory) -> None:
    name = next(e.name for e in large.entries if e.organization_id == "org-150")
    versions = {e.fhir_version: e.base_url for e in large.search(name, fhir_version=None, limit=None)}
    assert set(versions) == {"R4", "STU3", "DSTU2"}
    (r4,) = [e for e in large.search(name, limit=None) if e.organization_id == "org-150"]
    assert r4.fhir_version == "R4"
    assert r4.base_url.endswith("/api/FHIR/R4")


def test_retired_endpoints_are_left_out_unless_asked_for(large: EndpointDirectory) -> None:
    retired = [e for e in large.entries if e.retired]
    assert {e.status for e in retired} == {"off", "active"}  # status off, or a period that ended
    for entry in retired[:20]:
        assert entry not in large.search(entry.name, limit=None, fhir_version=None)
        assert entry in large.search(entry.name, limit=None, fhir_version=None, include_retired=True)
    with pytest.raises(ConfigurationError, match="retired"):
        retired[0].client()


def test_endpoints_without_a_name_are_kept_and_found_by_host(large: EndpointDirectory) -> None:
    unnamed = [e for e in large.entries if not e.name]
    assert len(unnamed) == 60
    (found,) = large.search("unnamed11999")
    assert found.base_url == "https://unnamed11999.example.test/api/FHIR/R4"


def test_facilities_use_their_brands_endpoint(large: EndpointDirectory) -> None:
    facility = next(e for e in large.entries if e.organization_id == "org-9")
    brand = next(e for e in large.entries if e.organization_id == "org-8")
    assert facility.base_url == brand.base_url
    assert facility.name != brand.name


def test_a_name_lookup_takes_well_under_a_millisecond(large: EndpointDirectory) -> None:
    timings = []
    for query in queries(400):
        start = time.perf_counter()
        large.search(query)
        timings.append(time.perf_counter() - start)
    assert statistics.median(timings) < 0.001, f"median lookup {statistics.median(timings) * 1e6:.0f} us"


def test_bad_searches_and_bad_bundles_are_typed_errors(large: EndpointDirectory) -> None:
    with pytest.raises(ConfigurationError, match="no letters"):
        large.search(" - ")
    with pytest.raises(ConfigurationError, match="limit"):
        large.search("mercy", limit=0)
    with pytest.raises(ConfigurationError, match="no organisation"):
        large.get("zzzz")
    with pytest.raises(EpicFHIRError, match="not an endpoint directory"):
        EndpointDirectory.from_bytes(b'{"resourceType": "Patient"}')
    with pytest.raises(EpicFHIRError, match="not valid JSON"):
        EndpointDirectory.from_bytes(b"<html>")
    odd = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Endpoint", "name": "No address"}},
            {"resource": {"resourceType": "Endpoint", "name": "Bad", "address": "mllp://x"}},
            {
                "resource": {
                    "resourceType": "Endpoint",
                    "name": "Ok",
                    "address": "https://ok.test/api/FHIR/R4/",
                }
            },
            {"resource": "not a resource"},
            "not an entry",
        ],
    }
    directory = EndpointDirectory.from_bundle(odd)
    assert [e.name for e in directory] == ["Ok"]
    assert directory.skipped == 4


# -- download, deadline, size bound and the on-disk cache ----------------------------------------------------


@dataclass
class DirectoryServer:
    """A loopback server for one directory document, with an ETag and Last-Modified, that records the
    conditional headers it receives."""

    body: bytes
    etag: str = '"v1"'
    status: int = 200
    stall: float = 0.0
    requests: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append({k.lower(): v for k, v in self.headers.items()})
                if server.stall:
                    time.sleep(server.stall)
                if server.status != 200:
                    self.send_response(server.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("If-None-Match") == server.etag:
                    self.send_response(304)
                    self.send_header("ETag", server.etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.body)))
                self.send_header("ETag", server.etag)
                self.send_header("Last-Modified", formatdate(1_770_000_000, usegmt=True))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading (the size bound, the deadline) breaks the pipe: expected here


@pytest.fixture
def served() -> Iterator[DirectoryServer]:
    state = DirectoryServer(orjson.dumps(brands_bundle(40, seed=5)))
    httpd = _QuietServer(("127.0.0.1", 0), state.handler())
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/Endpoints/R4"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.mark.anyio
async def test_the_cache_is_revalidated_with_etag_and_last_modified(
    served: DirectoryServer, tmp_path: Path
) -> None:
    first = await EndpointDirectory.fetch(served.url, cache_dir=tmp_path)
    assert "if-none-match" not in served.requests[0]
    assert len(list(tmp_path.glob("endpoints-*.json"))) == 2  # the body and its validators
    fresh = await EndpointDirectory.fetch(served.url, cache_dir=tmp_path)  # younger than max_age
    assert len(served.requests) == 1
    revalidated = await EndpointDirectory.fetch(served.url, cache_dir=tmp_path, max_age=0)
    assert served.requests[1]["if-none-match"] == '"v1"'
    assert served.requests[1]["if-modified-since"] == formatdate(1_770_000_000, usegmt=True)
    assert first.entries == fresh.entries == revalidated.entries
    served.etag, served.body = '"v2"', orjson.dumps(brands_bundle(30, seed=6))
    changed = await EndpointDirectory.fetch(served.url, cache_dir=tmp_path, max_age=0)
    assert len(changed) != len(first)
    again = await EndpointDirectory.fetch(served.url, cache_dir=tmp_path)
    assert again.entries == changed.entries
    assert len(served.requests) == 3


@pytest.mark.anyio
async def test_a_failing_server_falls_back_to_the_stale_copy_with_a_warning(
    served: DirectoryServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cached = await EndpointDirectory.fetch(served.url, cache_dir=tmp_path)
    served.status = 503
    with caplog.at_level(logging.WARNING, logger="epic_fhir_async.directory"):
        stale = await EndpointDirectory.fetch(served.url, cache_dir=tmp_path, max_age=0, retry=NO_RETRY)
    assert stale.entries == cached.entries
    assert "unreachable (503)" in caplog.text
    with pytest.raises(ServerError):
        await EndpointDirectory.fetch(
            served.url, cache_dir=tmp_path, max_age=0, retry=NO_RETRY, stale_if_error=False
        )
    with pytest.raises(ServerError):
        await EndpointDirectory.fetch(served.url, retry=NO_RETRY)  # nothing cached


@pytest.mark.anyio
async def test_a_download_is_bounded_in_size_and_time(served: DirectoryServer) -> None:
    with pytest.raises(ResponseTooLarge):
        await EndpointDirectory.fetch(served.url, max_bytes=100)
    served.stall = 2.0
    start = time.monotonic()
    with pytest.raises(RequestTimeout, match="endpoint directory"):
        await EndpointDirectory.fetch(served.url, deadline=0.3, retry=NO_RETRY)
    assert time.monotonic() - start < 1.5


@pytest.mark.anyio
async def test_a_directory_url_must_be_https_off_loopback() -> None:
    with pytest.raises(ConfigurationError, match="https"):
        await EndpointDirectory.fetch("http://open.epic.example/Endpoints/R4")
    with pytest.raises(ConfigurationError, match="deadline"):
        await EndpointDirectory.fetch(deadline=0)


def test_entries_are_plain_values() -> None:
    entry = DirectoryEntry("A", "https://a.test/api/FHIR/R4")
    assert entry == DirectoryEntry("A", "https://a.test/api/FHIR/R4")
    assert "EndpointDirectory 1 entries" in repr(EndpointDirectory([entry, entry]))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def _bundles(draw: st.DrawFn) -> Any:
    resources = draw(
        st.lists(
            st.fixed_dictionaries(
                {"resourceType": st.sampled_from(["Endpoint", "Organization", "Patient", 3])},
                optional={
                    name: _json_values | st.just("https://x.test/api/FHIR/R4/") for name in
                    ["name", "address", "status", "period", "extension", "contained", "managingOrganization",
                     "endpoint", "partOf", "alias", "active", "id"]
                },
            ),
            max_size=6,
        )
    )  # fmt: skip
    entries = [
        draw(st.sampled_from([{"resource": r}, {"resource": r, "fullUrl": 7}, r, None])) for r in resources
    ]
    return {"resourceType": "Bundle", "entry": draw(st.sampled_from([entries, {}, None, "x"]))}


@settings(max_examples=150, deadline=None)
@given(bundle=_bundles())
def test_any_bundle_gives_a_directory_or_a_typed_error(bundle: Any) -> None:
    try:
        directory = EndpointDirectory.from_bytes(orjson.dumps(bundle))
    except EpicFHIRError:
        return
    for entry in directory:
        assert entry.base_url.startswith(("https://", "http://"))
        directory.search(entry.name or "x", limit=None, fhir_version=None, include_retired=True)


_A = "https://x.test/api/FHIR/R4/"
_ODD_FIELDS = [
    {"resourceType": "Endpoint", "address": _A, "extension": 5},
    {"resourceType": "Endpoint", "address": _A, "contained": 5},
    {"resourceType": "Endpoint", "address": _A, "contained": [5]},
    {"resourceType": "Endpoint", "address": _A, "period": 5, "status": 3},
    {"resourceType": "Endpoint", "address": _A, "managingOrganization": 5},
    {"resourceType": "Organization", "endpoint": 5},
    {"resourceType": "Organization", "endpoint": [{"reference": 5}], "partOf": "x"},
    {"resourceType": "Organization", "alias": "one string", "id": 5},
]


@pytest.mark.parametrize("resource", _ODD_FIELDS)
def test_fields_of_the_wrong_shape_count_as_absent(resource: dict[str, Any]) -> None:
    good = {"resource": {"resourceType": "Endpoint", "id": "e", "name": "Good", "address": _A}}
    directory = EndpointDirectory.from_bundle(
        {"resourceType": "Bundle", "entry": [good, {"resource": resource}]}
    )
    assert "https://x.test/api/FHIR/R4" in {e.base_url for e in directory}
    assert all(e.aliases == () for e in directory)
