"""The client against a server that answers anything: every call ends in a result or an ``EpicFHIRError``.

``httpx.MockTransport`` serves generated answers (any status, content type, body, ``Location``,
``Retry-After``, ``WWW-Authenticate``; non-JSON bodies, JSON that is not a resource, Bundles with odd next
links, token responses without fields, manifests and NDJSON files of any shape). Retries are off or instant.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from epic_fhir_async import BackendServicesAuth, EpicFHIRClient, EpicFHIRError, StaticTokenAuth
from epic_fhir_async._retry import RetryPolicy
from epic_fhir_async.auth import SigningKey, generate_private_key
from epic_fhir_async.bulk._manifest import PollCadence

from ..conftest import fast_sdk_retries

pytestmark = pytest.mark.anyio

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow "explain" tracing
)
BASE = "https://fhir.example.org/api/FHIR/R4"
NO_RETRY = RetryPolicy(max_attempts=1)
FAST = PollCadence(initial=0.001, maximum=0.002, max_retry_after=0.002, min_delay=0.0)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
urls = st.sampled_from(
    [
        f"{BASE}/Patient?sessionID=2",
        "Patient?sessionID=3",
        "/api/FHIR/R4/Patient?page=4",
        "//evil.example/steal",
        "https://evil.example/R4/Patient",
        "http://[::1",
        "https://fhir.example.org:99999/x",
        f"{BASE}/Patient?x=\x00",
        "",
        " ",
        "mailto:someone",
    ]
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
bodies = st.one_of(
    st.binary(max_size=40),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.just(b"<html><body>IIS 404</body></html>"),
    st.just(b"<Bundle xmlns='http://hl7.org/fhir'/>"),
    st.just(b'{"resourceType": "Patient", "id": "p"}'),
    st.just(b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}'),
)


@st.composite
def answers(draw: st.DrawFn) -> httpx.Response:
    status = draw(
        st.sampled_from([200, 201, 202, 204, 301, 302, 303, 307, 400, 401, 403, 404, 410, 429, 500, 503])
    )
    headers = {"content-type": draw(st.sampled_from(["application/fhir+json", "application/json", "text/html",
                                                     "application/fhir+xml", "", "application/fhir+ndjson"]))}  # fmt: skip
    for name in ("location", "content-location", "retry-after", "www-authenticate", "x-progress"):
        if draw(st.booleans()):
            headers[name] = draw(urls.filter(str.isprintable) | header_values)
    return httpx.Response(status, headers=headers, content=draw(bodies))


def _copy(response: httpx.Response) -> httpx.Response:
    return httpx.Response(response.status_code, headers=response.headers, content=response.content)


@pytest.fixture
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_sdk_retries(monkeypatch, 0.0, kickoff_max_retry_after=0.0)


@functools.cache
def _key() -> SigningKey:
    return generate_private_key("ES256")


def _client(handler: Callable[[httpx.Request], httpx.Response], auth: Any = None) -> EpicFHIRClient:
    return EpicFHIRClient(
        BASE, auth=auth or StaticTokenAuth("tok"), transport=httpx.MockTransport(handler), retry=NO_RETRY
    )


@FUZZ
@given(answers())
async def test_read_gives_a_resource_or_a_typed_error(answer: httpx.Response) -> None:
    async with _client(lambda request: _copy(answer)) as client:
        try:
            resource = await client.read("Patient", "p")
        except EpicFHIRError:
            return
    assert isinstance(resource, dict)


def _bundle(next_url: str | None, entries: Any) -> httpx.Response:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "entry": entries}
    if next_url is not None:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return httpx.Response(200, json=bundle, headers={"content-type": "application/fhir+json"})


@FUZZ
@given(urls, st.lists(json_values, max_size=3), answers())
async def test_search_with_odd_next_links_and_pages(
    next_url: str, entries: Any, second: httpx.Response
) -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return _bundle(next_url, entries) if len(hosts) == 1 else _copy(second)

    async with _client(handler) as client:
        try:
            found = [r async for r in client.search("Patient", identifier="x")]
        except EpicFHIRError:
            found = None
    assert found is None or all(isinstance(r, dict) for r in found)
    assert set(hosts) == {"fhir.example.org"}  # a next link elsewhere is refused, never fetched


token_bodies = st.one_of(
    bodies,
    st.fixed_dictionaries(
        {},
        optional={
            "access_token": st.sampled_from(["ok-token", "", "a b", "tök", "x\r\ny"]) | json_values,
            "token_type": st.sampled_from(["bearer", "Bearer", "MAC"]) | json_values,
            "expires_in": st.sampled_from([3600, "3600", -1, "soon", 1e300]) | json_values,
            "scope": json_values,
            "error": st.sampled_from(["invalid_client", "invalid_grant", "x"]) | json_values,
            "error_description": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
)


@FUZZ
@given(
    st.sampled_from([200, 400, 401, 429, 500, 503]),
    token_bodies,
    st.sampled_from(["application/json", "text/html"]),
)
async def test_token_responses_of_every_shape(
    no_waits: None, status: int, body: bytes, content_type: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(status, content=body, headers={"content-type": content_type})
        assert request.headers["authorization"].endswith(" ok-token")  # only a usable token is ever sent
        return httpx.Response(200, json={"resourceType": "Patient", "id": "p"})

    auth = BackendServicesAuth("client", _key(), token_url="https://fhir.example.org/oauth2/token")
    async with _client(handler, auth) as client:
        try:
            resource = await client.read("Patient", "p")
        except EpicFHIRError:
            return
    assert resource == {"resourceType": "Patient", "id": "p"}


file_urls = st.sampled_from(
    [f"{BASE}/BulkRequest/1/f1", "BulkRequest/1/f2", "https://cdn.example/f3", "http://[::1"]
)
manifests = st.fixed_dictionaries(
    {"output": st.lists(st.fixed_dictionaries({"type": st.just("Patient"), "url": file_urls},
                                              optional={"count": st.integers(0, 3) | json_values}), max_size=2)},
    optional={"requiresAccessToken": json_values, "error": json_values, "link": json_values},
) | json_values  # fmt: skip
ndjson = st.lists(
    st.sampled_from([b'{"resourceType":"Patient","id":"a"}', b"", b"\r", b"{", b"[1]", b"\xff", b"null"]),
    max_size=4,
).map(b"\n".join)


@FUZZ
@given(answers(), manifests, ndjson, st.booleans())
async def test_bulk_export_with_odd_answers(
    no_waits: None, kick: httpx.Response, manifest: Any, body: bytes, location_ok: bool
) -> None:
    polls: Iterator[int] = iter(range(1000))

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/$export"):
            if location_ok:
                return httpx.Response(202, headers={"content-location": f"{BASE}/BulkRequest/1"})
            return _copy(kick)
        if path.endswith("/BulkRequest/1"):
            if request.method == "DELETE":
                return httpx.Response(202)
            if next(polls) == 0 and not location_ok:
                return _copy(kick)  # one odd status answer, then the manifest
            return httpx.Response(200, json=manifest, headers={"content-type": "application/json"})
        return httpx.Response(200, content=body, headers={"content-type": "application/fhir+ndjson"})

    async with _client(handler) as client:
        try:
            async with client.bulk_export("g", types=["Patient"], cadence=FAST) as job:
                await job.wait(max_transient_errors=2)
                async with job.resources() as stream:
                    found = [r async for r in stream]
        except EpicFHIRError:
            return
    assert all(r is None or isinstance(r, (dict, list)) for r in found)
