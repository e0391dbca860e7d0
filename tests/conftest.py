"""Shared test configuration: every async test runs on asyncio and on trio (anyio's pytest plugin), and no test
reaches the network beyond loopback (the guard below makes that a failure instead of a convention).

Also the fakes and fixtures that tests in several folders use: :class:`FakeEpic` (a tiny Epic token server and
FHIR endpoint on ``httpx.MockTransport``), :class:`Recorder` (a MockTransport handler that records requests),
:class:`ParseRecorder` (which JSON parses ran with the cyclic GC paused),
a client on the default in-process sandbox, and a real redis-server (``redis_url``, ``redis_db``).
"""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import itertools
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import anyio
import httpx
import jwt as pyjwt
import orjson
import pytest

from epic_fhir_async import EpicFHIRClient, RetryPolicy, StaticTokenAuth, _json
from epic_fhir_async.sandbox import EpicSandbox

from ._redis_server import DATABASES, emptied, redis_server

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class NetworkRefused(OSError):
    """A test tried to reach something other than 127.0.0.1 / ::1."""


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        raise NetworkRefused(f"tests may only connect to loopback, not {address[0]!r}")


def _connect(self: socket.socket, address: Any) -> None:
    _check(self, address)
    _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host is not None and not _is_loopback(host):
        raise NetworkRefused(f"tests may only resolve loopback names, not {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    socket.socket.connect = _connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = _getaddrinfo


def pytest_unconfigure(config: pytest.Config) -> None:
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _real_getaddrinfo


@pytest.fixture(params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- shared constants --------------------------------------------------------------------------------------

BASE = "https://fhir.example.org/interconnect-fhir-oauth/api/FHIR/R4"
TOKEN_URL = "https://fhir.example.org/interconnect-fhir-oauth/oauth2/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CAMILA = "erXuFYUfucBZaryVksYEcMg3"
JSON_CT = {"Content-Type": "application/fhir+json"}


# -- FakeEpic: token endpoint, discovery and FHIR reads on MockTransport -------------------------------------
#
# The token endpoint verifies client assertions with PyJWT, an implementation independent of the joserfc code
# path the SDK signs with, applying Epic's rules for Backend Services assertions. The full emulator
# (``epic_fhir_async.sandbox``) is tested in tests/sandbox/.


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, content=_json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})}
    )


@dataclass
class FakeEpic:
    """Counts and checks token requests; FHIR reads need a live bearer token."""

    public_jwks: dict[str, Any] | None = None
    base: str = BASE
    token_url: str = TOKEN_URL
    client_id: str = "test-client"
    lifetime: int = 3600
    token_delay: float = 0.0
    smart_configuration: bool = True
    metadata_token: bool = True
    scripted: list[httpx.Response] = field(default_factory=list)
    token_requests: int = 0
    fhir_requests: int = 0
    forms: list[dict[str, str]] = field(default_factory=list)
    token_headers: list[httpx.Headers] = field(default_factory=list)
    discovery_requests: list[httpx.Request] = field(default_factory=list)
    fhir_requests_seen: list[httpx.Request] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    seen_jti: set[str] = field(default_factory=set)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def verify_assertion(self, assertion: str) -> dict[str, Any]:
        assert self.public_jwks is not None
        header = pyjwt.get_unverified_header(assertion)
        jwk = next(k for k in self.public_jwks["keys"] if k["kid"] == header["kid"])
        key = pyjwt.PyJWK(jwk).key
        claims: dict[str, Any] = pyjwt.decode(
            assertion,
            key=key,
            algorithms=[header["alg"]],
            audience=TOKEN_URL,
            issuer=self.client_id,
            options={"require": ["exp", "iat", "nbf", "jti", "iss", "sub", "aud"]},
        )
        assert claims["sub"] == self.client_id
        assert claims["exp"] - claims["iat"] <= 300
        assert claims["jti"] not in self.seen_jti
        self.seen_jti.add(claims["jti"])
        return claims

    def issue(self) -> str:
        token = f"tok-{next(self._counter)}-secretvalue"
        self.issued.append(token)
        return token

    async def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/oauth2/token"):
            self.token_requests += 1
            form = dict(parse_qsl(request.content.decode()))
            self.forms.append(form)
            self.token_headers.append(request.headers)
            if self.token_delay:
                await anyio.sleep(self.token_delay)
            if self.scripted:
                return self.scripted.pop(0)
            if form.get("client_assertion_type") == JWT_BEARER:
                try:
                    self.verify_assertion(form["client_assertion"])
                except (pyjwt.PyJWTError, AssertionError, StopIteration, KeyError):
                    return json_response(400, {"error": "invalid_client", "error_description": None})
            body: dict[str, Any] = {
                "access_token": self.issue(),
                "token_type": "bearer",
                "expires_in": self.lifetime,
            }
            if "scope" in form:
                body["scope"] = form["scope"]
            return json_response(200, body)
        if path.endswith("/.well-known/smart-configuration"):
            self.discovery_requests.append(request)
            if not self.smart_configuration:
                return httpx.Response(
                    404, text="<html>not found</html>", headers={"Content-Type": "text/html"}
                )
            return json_response(
                200, {"token_endpoint": TOKEN_URL, "authorization_endpoint": TOKEN_URL[:-5] + "authorize"}
            )
        if path.endswith("/metadata"):
            self.discovery_requests.append(request)
            security: dict[str, Any] = {"extension": []}
            if self.metadata_token:
                security["extension"].append(
                    {
                        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                        "extension": [
                            {"url": "authorize", "valueUri": TOKEN_URL[:-5] + "authorize"},
                            {"url": "token", "valueUri": TOKEN_URL},
                        ],
                    }
                )
            return json_response(
                200, {"resourceType": "CapabilityStatement", "rest": [{"security": security}]}
            )
        self.fhir_requests += 1
        self.fhir_requests_seen.append(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or token not in self.issued or token in self.revoked:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return json_response(200, {"resourceType": "Patient", "id": path.rsplit("/", 1)[-1]})


# -- Recorder: a client on MockTransport that records every request -----------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that records every request and answers with ``answer`` (a Patient by default)."""

    def __init__(self, answer: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self._answer = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self._answer is not None:
            return self._answer(request)
        return httpx.Response(200, json={"resourceType": "Patient", "id": CAMILA}, headers=JSON_CT)

    def client(self, **kwargs: object) -> EpicFHIRClient:
        kwargs.setdefault("retry", RetryPolicy(max_attempts=1))
        return EpicFHIRClient(
            BASE,
            auth=StaticTokenAuth("tok-recorded"),
            transport=httpx.MockTransport(self),
            **kwargs,  # type: ignore[arg-type]
        )


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


# -- the cyclic GC while bodies are parsed -----------------------------------------------------------------


class ParseRecorder:
    """orjson.loads, noting whether the cyclic GC was enabled while it ran (see :func:`parse_recorder`)."""

    def __init__(self) -> None:
        self.enabled_during: list[bool] = []
        self._loads = orjson.loads

    def loads(self, data: Any) -> Any:
        self.enabled_during.append(gc.isenabled())
        return self._loads(data)


@pytest.fixture
def parse_recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[ParseRecorder]:
    """Records every JSON parse; checks at the end that the collector is as the test found it."""
    rec = ParseRecorder()
    monkeypatch.setattr(orjson, "loads", rec.loads)  # what the pausing parsers call
    monkeypatch.setattr(_json, "loads", rec.loads)  # what pause_gc=False uses
    was = gc.isenabled()
    yield rec
    assert gc.isenabled() == was
    gc.enable()


# -- the default in-process sandbox ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_sandbox() -> EpicSandbox:
    """``EpicSandbox()`` with its defaults, shared by a module's tests (they only read from it)."""
    return EpicSandbox()


@pytest.fixture
def sandbox_client(default_sandbox: EpicSandbox) -> EpicFHIRClient:
    return EpicFHIRClient(
        default_sandbox.base_url,
        auth=StaticTokenAuth(default_sandbox.issue_token()),
        transport=default_sandbox.transport(),
    )


# -- a real redis-server (the fleet's shared state, the web app's sessions) ---------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:<port>`` of one redis-server for the run (no persistence), stopped after."""
    pytest.importorskip("redis", reason="the redis extra is not installed")
    with redis_server() as url:
        yield url


_databases = itertools.count()


@pytest.fixture
def redis_db(redis_url: str) -> str:
    """A Redis database of this test's own (databases 1-15 in turn, emptied first): no test meets another's
    keys."""
    return emptied(redis_url, 1 + next(_databases) % (DATABASES - 1))


def fast_sdk_retries(
    patch: pytest.MonkeyPatch, delay: float = 0.0, *, kickoff_max_retry_after: float | None = None
) -> None:
    """Make the SDK's own retry loops (token request, bulk kick-off, bulk files) wait ``delay`` seconds between
    attempts instead of their real backoff; the attempt counts stay as they are."""
    from epic_fhir_async import _retry

    for name in ("TOKEN_RETRY", "KICKOFF_RETRY", "BULK_FILE_RETRY"):
        policy = getattr(_retry, name)
        changes: dict[str, float] = {"backoff_base": delay, "backoff_max": delay, "jitter": 0.0}
        if name == "KICKOFF_RETRY" and kickoff_max_retry_after is not None:
            changes["max_retry_after"] = kickoff_max_retry_after
        patch.setattr(_retry, name, dataclasses.replace(policy, **changes))
