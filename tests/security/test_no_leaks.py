"""No token, assertion, key or secret in any log record, ``repr`` or exception over a full run at DEBUG.

One run over real sockets (so httpx's and httpcore's own DEBUG logging is exercised too): discovery-free
Backend Services auth, reads, a paged search, a concurrent pull, a bulk export streamed and deleted, a token
refresh after a 401, and errors of every kind (404, 401 with a bad token, a refused token request, a token
flake, an unsafe URL). Every secret that crossed the wire is recorded by a transport wrapper; then every log
record (message and traceback), every ``repr``/``str`` of the objects involved and every exception chain is
searched for each secret, whole and as a 24-character slice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from epic_fhir_async import BackendServicesAuth, EpicFHIRClient, EpicFHIRError, StaticTokenAuth
from epic_fhir_async.auth import (
    ClientSecretAuth,
    generate_private_key,
    private_key_pem,
    public_jwks,
)
from epic_fhir_async.auth._client_auth import ClientSecretBasic, ClientSecretPost
from epic_fhir_async.bulk._manifest import PollCadence
from epic_fhir_async.sandbox import EpicSandbox

from ..conftest import fast_sdk_retries

pytestmark = pytest.mark.anyio


class Recorder(httpx.AsyncBaseTransport):
    """Wraps the real transport and keeps every bearer token and client assertion that was sent."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.secrets: set[str] = set()
        self.jtis: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        authorization = request.headers.get("authorization")
        if authorization:
            self.secrets.add(authorization.partition(" ")[2])
        if request.url.path.endswith("/token"):
            form = parse_qs((await request.aread()).decode())
            for assertion in form.get("client_assertion", []):
                self.secrets.add(assertion)
                self.secrets.add(assertion.rsplit(".", 1)[1])  # the signature alone
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _texts_of(value: Any) -> list[str]:
    texts = [repr(value), str(value)]
    if isinstance(value, BaseException):
        for link in _chain(value):
            texts += [repr(link), str(link), *map(str, getattr(link, "args", ()))]
    return texts


async def test_a_full_run_at_debug_leaks_nothing(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_sdk_retries(monkeypatch, 0.0)
    caplog.set_level(logging.DEBUG)  # every logger: epic_fhir_async, httpx, httpcore, uvicorn
    sb = EpicSandbox(seed=3, patients=3, page_size=5, export_seconds=0.05)
    key = generate_private_key("RS384")
    sb.register_client("leak-test", public_jwks(key))
    observed: list[Any] = [key]
    async with sb.serve(port=0) as base_url:
        recorder = Recorder(httpx.AsyncHTTPTransport())
        auth = BackendServicesAuth("leak-test", key, token_url=sb.token_url, wall_clock=sb.clock.now)
        async with EpicFHIRClient(base_url, auth=auth, transport=recorder) as client:
            patient_id = sb.dataset.patient_ids[0]
            observed += [client, auth, await client.read("Patient", patient_id)]
            query = client.search("Condition", patient=patient_id)  # a few pages of five
            observed += [query, len([r async for r in query])]
            async with client.pull(sb.dataset.patient_ids[:2], ["Condition", "Encounter"]) as stream:
                observed += [stream, len([item async for item in stream])]
            fast = PollCadence(initial=0.02, maximum=0.05, max_retry_after=0.05, min_delay=0.01)
            async with client.bulk_export(
                sb.dataset.group_id, types=["Patient", "Condition"], cadence=fast
            ) as job:
                observed += [job, await job.wait()]
                async with job.resources() as resources:
                    observed.append(len([r async for r in resources]))
                await job.delete()
            sb.clock.advance(7200.0)  # the server expires the token: 401, one refresh, one replay
            observed += [
                await client.read("Patient", patient_id),
                auth.token_manager,
                auth.token_manager.current,
            ]
            sb.faults.token_flake_rate = 1.0  # two bare 400s in a row: the request fails
            auth.invalidate()
            errors: list[BaseException] = []
            for attempt in (
                lambda: client.read("Patient", patient_id),
                lambda: client.read("Patient", "no-such-id"),
                lambda: client.binary("https://evil.example/Binary/1"),
            ):
                try:
                    await attempt()
                except EpicFHIRError as exc:
                    errors.append(exc)
            sb.faults.token_flake_rate = 0.0
            stranger = BackendServicesAuth("not-registered", generate_private_key(), token_url=sb.token_url)
            bad = StaticTokenAuth("not-a-valid-token-" + uuid.uuid4().hex)
            for other in (stranger, bad):
                async with EpicFHIRClient(base_url, auth=other, transport=recorder) as c:
                    try:
                        await c.read("Patient", patient_id)
                    except EpicFHIRError as exc:
                        errors.append(exc)
                observed.append(other)
    assert len(errors) == 5
    observed += errors

    secrets = set(recorder.secrets)
    jwk = key.jwk.as_dict(private=True)
    secrets |= {str(jwk[name]) for name in ("d", "p", "q", "dp", "dq", "qi")}
    secrets |= {line for line in private_key_pem(key).decode().splitlines() if "-----" not in line}
    assert len(recorder.secrets) >= 6  # several tokens and assertions really crossed the wire
    needles = secrets | {s[len(s) // 2 : len(s) // 2 + 24] for s in secrets if len(s) >= 48}

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    haystack = [formatter.format(record) for record in caplog.records]
    assert any(record.name.startswith("httpcore") for record in caplog.records)  # DEBUG really on
    for value in observed:
        haystack += _texts_of(value)
    leaks = [(needle[:12], text[:120]) for text in haystack for needle in needles if needle in text]
    assert leaks == []


def test_client_secrets_are_masked_in_every_repr() -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    for value in (
        ClientSecretBasic("app", secret),
        ClientSecretPost("app", secret),
        ClientSecretAuth("app", secret, token_url="https://fhir.example.org/oauth2/token"),
        StaticTokenAuth(secret),
    ):
        assert secret not in repr(value)
        assert secret not in str(value)
