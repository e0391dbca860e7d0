"""Review P2: a closed client, a string as auth, a bad RetryPolicy and a 429's wait all give typed errors."""

from __future__ import annotations

import math

import httpx
import pytest

from epic_fhir_async import (
    ClientClosed,
    ConfigurationError,
    EpicFHIRClient,
    EpicFHIRError,
    RateLimited,
    RetryPolicy,
    StaticTokenAuth,
)

from .conftest import BASE, CAMILA, Recorder

pytestmark = pytest.mark.anyio


async def test_use_after_async_with_raises_client_closed(recorder: Recorder) -> None:
    async with recorder.client() as client:
        await client.read("Patient", CAMILA)
    with pytest.raises(ClientClosed, match=r"aclose\(\) was called or its `async with` block ended"):
        await client.read("Patient", CAMILA)
    with pytest.raises(ClientClosed):
        [r async for r in client.search("Observation", patient=CAMILA)]
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
    with pytest.raises(RuntimeError) as info:  # what httpx raised before: old handlers keep working
        await client.capabilities()
    assert isinstance(info.value, EpicFHIRError)


async def test_closed_caller_owned_http_client_is_named(recorder: Recorder) -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    await http.aclose()
    client = EpicFHIRClient(BASE, http_client=http)
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


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_attempts": 0}, "max_attempts=0"),
        ({"max_attempts": -1}, "int >= 1"),
        ({"max_attempts": 2.5}, "int >= 1"),
        ({"max_attempts": True}, "int >= 1"),
        ({"backoff_base": -0.1}, "backoff_base=-0.1"),
        ({"backoff_max": math.nan}, "backoff_max=nan"),
        ({"max_total_wait": -1}, "seconds >= 0"),
        ({"max_retry_after": "60"}, "max_retry_after='60'"),
        ({"jitter": 1.5}, "between 0 and 1"),
        ({"jitter": -0.1}, "between 0 and 1"),
        ({"statuses": frozenset({99})}, "ints 100-599"),
        ({"statuses": "429"}, "ints 100-599"),
    ],
)
def test_retry_policy_validates_its_arguments(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_retry_policy_accepts_edge_values_and_any_collection_of_statuses() -> None:
    statuses: object = {503, 429}  # a set, not the annotated frozenset
    policy = RetryPolicy(max_attempts=1, backoff_base=0, jitter=0, max_total_wait=math.inf, statuses=statuses)  # type: ignore[arg-type]
    assert policy.statuses == frozenset({429, 503})
    assert hash(policy)  # still a frozen, hashable value


@pytest.mark.parametrize(("header", "expected"), [("300", "retry after 300 s"), (None, None)])
async def test_rate_limited_message_names_the_wait(header: str | None, expected: str | None) -> None:
    headers = {"Retry-After": header} if header else {}
    recorder = Recorder(lambda request: httpx.Response(429, headers=headers))
    async with recorder.client(
        retry=RetryPolicy(max_attempts=3, max_retry_after=60, backoff_base=0.0)
    ) as client:
        with pytest.raises(RateLimited) as info:
            await client.read("Patient", CAMILA)
    if expected is None:
        assert info.value.retry_after is None
        assert "retry after" not in str(info.value)
    else:
        assert len(recorder.requests) == 1  # 300 s is beyond max_retry_after: not slept on
        assert info.value.retry_after == 300
        assert expected in str(info.value)
