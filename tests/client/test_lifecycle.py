"""A closed client, a closed caller-owned http_client, and auth or retry of the wrong type give typed errors."""

from __future__ import annotations

import httpx
import pytest

from epic_fhir_async import ClientClosed, ConfigurationError, EpicFHIRClient, EpicFHIRError, StaticTokenAuth
from tests.conftest import BASE, CAMILA, Recorder

pytestmark = pytest.mark.anyio


async def test_use_after_async_with_raises_client_closed(recorder: Recorder) -> None:
    async with recorder.client() as client:
        await client.read("Patient", CAMILA)
    with pytest.raises(ClientClosed, match=r"aclose\(\) was called or its `async with` block ended"):
        await client.read("Patient", CAMILA)
    with pytest.raises(ClientClosed):
        [r async for r in client.search("Observation", patient=CAMILA, category="laboratory")]
    with pytest.raises(ClientClosed):
        async with client.stream("GET", "metadata"):
            pass  # pragma: no cover - never reached
    with pytest.raises(ClientClosed):
        async with client:
            pass  # pragma: no cover - never reached
    assert len(recorder.requests) == 1


async def test_use_after_aclose_is_also_a_runtime_error(recorder: Recorder) -> None:
    client = recorder.client()
    await client.aclose()
    with pytest.raises(
        RuntimeError
    ) as info:  # a RuntimeError, as httpx raises: handlers written for it keep working
        await client.capabilities()
    assert isinstance(info.value, EpicFHIRError)


async def test_closed_caller_owned_http_client_is_named(recorder: Recorder) -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    await http.aclose()
    client = EpicFHIRClient(BASE, http_client=http, retry=False)
    with pytest.raises(ClientClosed, match="http_client given to this EpicFHIRClient is closed"):
        await client.read("Patient", CAMILA)
    assert recorder.requests == []


def test_string_auth_gets_the_static_token_hint() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.secret-token-value"
    with pytest.raises(ConfigurationError) as info:
        EpicFHIRClient(BASE, auth=token)  # type: ignore[arg-type]
    assert 'auth=StaticTokenAuth("...")' in str(info.value)
    assert token not in str(info.value)
    assert "secret" not in str(info.value)


def test_other_auth_objects_are_refused_by_type() -> None:
    with pytest.raises(ConfigurationError, match=r"auth must be an EpicAuth .*got tuple"):
        EpicFHIRClient(BASE, auth=("user", "password"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="retry must be a RetryPolicy"):
        EpicFHIRClient(BASE, auth=StaticTokenAuth("t"), retry=3)  # type: ignore[arg-type]
