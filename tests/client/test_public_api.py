"""The public API stays honest: __all__ is complete and exact, nothing private leaks, imports stay light, and
the library's logger prints nothing unless the application configures logging (a NullHandler)."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import types

import pytest

import epic_fhir_async

#: Names each namespace loads on first use (their modules are not imported by ``import epic_fhir_async``).
LAZY = {
    "": {
        "AccessToken",
        "BackendServicesAuth",
        "ClientSecretAuth",
        "RefreshTokenAuth",
        "SmartAuth",
        "SmartLaunch",
        "SmartTokenSet",
    },
    "auth": {
        "AccessToken",
        "AuthorizationRequest",
        "BackendServicesAuth",
        "ClientSecretAuth",
        "IdTokenVerifier",
        "InMemoryTokenCache",
        "InMemoryTokenSetStore",
        "InsecureKeyFileWarning",
        "PendingSignIn",
        "RedisTokenSetStore",
        "RefreshTokenAuth",
        "SigningKey",
        "SmartAuth",
        "SmartEndpoints",
        "SmartLaunch",
        "SmartSessions",
        "SmartTokenSet",
        "TokenAuth",
        "TokenCache",
        "TokenCacheKey",
        "TokenCipher",
        "TokenManager",
        "TokenSetStore",
        "build_client_assertion",
        "discover_endpoints",
        "generate_private_key",
        "load_private_keys",
        "private_key_pem",
        "public_jwks",
    },
    "bulk": {"BulkDownloadResult", "BulkTransferStats", "DownloadedFile"},
}


def fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter (nothing imported yet)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_all_lists_every_public_name_and_only_existing_ones() -> None:
    public = {
        name
        for name, value in vars(epic_fhir_async).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert set(epic_fhir_async.__all__) == public | LAZY[""] | {"__version__"}
    for name in epic_fhir_async.__all__:
        assert hasattr(epic_fhir_async, name), name


@pytest.mark.parametrize("namespace", ["auth", "pull", "bulk"])
def test_each_sub_namespace_exports_exactly_its_public_names(namespace: str) -> None:
    module = importlib.import_module(f"epic_fhir_async.{namespace}")
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert set(module.__all__) == public | LAZY.get(namespace, set())
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize(
    ("name", "namespace"),
    [("PullCheckpoint", "pull"), ("BulkExportJob", "bulk"), ("generate_private_key", "auth")],
)
def test_a_name_that_moved_to_a_sub_namespace_still_resolves_with_a_deprecation_warning(
    name: str, namespace: str
) -> None:
    with pytest.warns(DeprecationWarning, match=rf"epic_fhir_async\.{namespace}\.{name}"):
        value = getattr(epic_fhir_async, name)
    assert value is getattr(importlib.import_module(f"epic_fhir_async.{namespace}"), name)
    assert name not in epic_fhir_async.__all__


def test_the_web_app_names_load_on_first_use_and_only_then() -> None:
    code = (
        "import sys, epic_fhir_async;"
        "from epic_fhir_async.auth import BackendServicesAuth, TokenManager;"
        "web = ('_id_token', '_redis_store', '_smart_launch', '_smart_request', '_smart_sessions', '_token_store');"
        "before = [m for m in web if 'epic_fhir_async.auth.' + m in sys.modules];"
        "from epic_fhir_async.auth import SmartSessions;"
        "from epic_fhir_async import SmartLaunch;"
        "print(before, SmartSessions.__name__, SmartLaunch is epic_fhir_async.auth.SmartLaunch)"
    )
    assert fresh_python(code) == "[] SmartSessions True"


def test_a_job_with_a_ready_token_loads_no_grant_and_streaming_loads_no_download() -> None:
    code = (
        "import sys, epic_fhir_async;"
        "from epic_fhir_async import EpicFHIRClient, StaticTokenAuth;"
        "client = EpicFHIRClient('https://fhir.example/R4', auth=StaticTokenAuth('t'));"
        "job = client.bulk_export_job('https://fhir.example/R4/BulkRequest/1');"
        "heavy = ('auth._backend', 'auth._grants', 'auth._keys', 'auth._token_manager', 'auth._smart_auth',"
        " 'auth._discovery', 'bulk._download');"
        "before = [m for m in heavy if 'epic_fhir_async.' + m in sys.modules];"
        "from epic_fhir_async import BackendServicesAuth;"
        "from epic_fhir_async.bulk import BulkTransferStats;"
        "after = [m for m in heavy if 'epic_fhir_async.' + m in sys.modules];"
        "print(before, 'auth._backend' in after, 'bulk._download' in after)"
    )
    assert fresh_python(code) == "[] True True"


def test_an_unknown_top_level_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        getattr(epic_fhir_async, "NoSuchThing")  # noqa: B009 - the dynamic lookup is the point
    with pytest.raises(AttributeError, match="NoSuchThing"):
        getattr(epic_fhir_async.auth, "NoSuchThing")  # noqa: B009
    with pytest.raises(AttributeError, match="NoSuchThing"):
        getattr(importlib.import_module("epic_fhir_async.bulk"), "NoSuchThing")  # noqa: B009


def test_the_top_level_is_small_and_loads_neither_pull_nor_bulk() -> None:
    assert len(epic_fhir_async.__all__) <= 55
    code = (
        "import sys, epic_fhir_async;"
        "print(','.join(m for m in ('epic_fhir_async.pull', 'epic_fhir_async.bulk') if m in sys.modules))"
    )
    assert fresh_python(code) == ""


def test_every_exported_error_derives_from_the_root() -> None:
    for name in epic_fhir_async.__all__:
        value = getattr(epic_fhir_async, name)
        if isinstance(value, type) and issubclass(value, BaseException) and not issubclass(value, Warning):
            assert issubclass(value, epic_fhir_async.EpicFHIRError), name


def test_import_loads_no_optional_extra() -> None:
    # rich is absent from the list on purpose: httpx itself imports it (for its own CLI) when installed.
    code = (
        "import sys, epic_fhir_async, epic_fhir_async.auth;"
        "bad = [m for m in ('uvicorn', 'h2', 'trio', 'respx', 'aiohttp', 'joserfc', 'cryptography', 'epic_fhir_async.sandbox',"
        " 'epic_fhir_async.cli', 'epic_fhir_async.directory', 'epic_fhir_async.models', 'fhir', 'fhir_core',"
        " 'pydantic', 'mkdocs', 'mkdocstrings', 'griffe', 'redis', 'distributed') if m in sys.modules];"
        "print(','.join(bad))"
    )
    assert fresh_python(code) == ""


# -- library logging ----------------------------------------------------------------------------------------
def test_the_library_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("epic_fhir_async").handlers
    assert any(type(h) is logging.NullHandler for h in handlers)


def test_without_logging_config_records_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    printed: list[logging.LogRecord] = []

    class LastResort(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            printed.append(record)

    monkeypatch.setattr(logging.root, "handlers", [])  # an application that configured no logging
    monkeypatch.setattr(logging, "lastResort", LastResort(logging.WARNING))  # what would print to stderr
    logging.getLogger("epic_fhir_async.pull").warning("pull stream failed")
    assert printed == []
