"""Every bad argument raises ConfigurationError: a ValueError (what Python raises for bad arguments), never an
AuthError (so ``except AuthError`` does not swallow a misspelled resource type), and before any request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from epic_fhir_async import AuthError, ConfigurationError, EpicFHIRClient, EpicFHIRError, StaticTokenAuth
from epic_fhir_async.auth import IdTokenVerifier, TokenManager, build_client_assertion, generate_private_key
from epic_fhir_async.bulk import PollCadence

BASE = "https://fhir.example.org/api/FHIR/R4"


def test_configuration_error_is_a_value_error_and_not_an_auth_error() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationError, EpicFHIRError)
    assert not issubclass(ConfigurationError, AuthError)


def _never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request may be sent for a bad argument: {request.method} {request.url}")


async def _fake_token() -> Any:
    raise AssertionError("not called")


BAD_CALLS: dict[str, Callable[[EpicFHIRClient], Any]] = {
    "misspelled type": lambda c: c.read("patient", "p1"),
    "path in an id": lambda c: c.read("Patient", "../metadata"),
    "group and patient level": lambda c: c.bulk_export("g1", patient_level=True),
    "kick-off method": lambda c: c.bulk_export("g1", method="PUT"),  # type: ignore[arg-type]
    "pull concurrency": lambda c: c.pull(["p1"], ["Patient"], concurrency=0),
    "operation name": lambda c: c.operation("a/b"),
}


async def _call(make: Callable[[EpicFHIRClient], Any], client: EpicFHIRClient) -> None:
    result = make(client)
    if hasattr(result, "__await__"):
        await result


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(BAD_CALLS))
async def test_bad_client_arguments_raise_configuration_error_before_any_request(case: str) -> None:
    async with EpicFHIRClient(
        BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(_never_called)
    ) as client:
        with pytest.raises(ConfigurationError):
            await _call(BAD_CALLS[case], client)


def test_a_misspelled_type_is_not_caught_as_an_auth_error() -> None:
    client = EpicFHIRClient(BASE, auth=StaticTokenAuth("t"), transport=httpx.MockTransport(_never_called))
    caught: BaseException | None = None
    try:
        client.search("observation", patient="p1")
    except AuthError as exc:  # the point of the test: this handler must not see it
        pytest.fail(f"a misspelled resource type was caught by `except AuthError`: {exc!r}")
    except ConfigurationError as exc:
        caught = exc
    assert isinstance(caught, ValueError)
    assert "did you mean 'Observation'" in str(caught)


@pytest.mark.parametrize(
    "build",
    [
        lambda: PollCadence(initial=0),
        lambda: TokenManager(_fake_token, leeway=-1),
        lambda: build_client_assertion(
            generate_private_key(), client_id="c", audience="https://t.example/token", lifetime=900
        ),
        lambda: IdTokenVerifier(algorithms=("HS256",)),
    ],
    ids=["poll cadence", "token manager leeway", "assertion lifetime", "id_token algorithms"],
)
def test_bad_settings_raise_configuration_error(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigurationError):
        build()
