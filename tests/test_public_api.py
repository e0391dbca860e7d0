"""The public API stays honest: __all__ is complete and exact, nothing private leaks, imports stay light."""

from __future__ import annotations

import subprocess
import sys
import types

import epic_fhir_async


def test_all_lists_every_public_name_and_only_existing_ones() -> None:
    public = {
        name
        for name, value in vars(epic_fhir_async).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert set(epic_fhir_async.__all__) == public | {"__version__"}
    for name in epic_fhir_async.__all__:
        assert hasattr(epic_fhir_async, name), name


def test_every_exported_error_derives_from_the_root() -> None:
    for name in epic_fhir_async.__all__:
        value = getattr(epic_fhir_async, name)
        if isinstance(value, type) and issubclass(value, BaseException) and not issubclass(value, Warning):
            assert issubclass(value, epic_fhir_async.EpicFHIRError), name


def test_import_loads_no_optional_extra() -> None:
    # rich is absent from the list on purpose: httpx itself imports it (for its own CLI) when installed.
    code = (
        "import sys, epic_fhir_async, epic_fhir_async.auth;"
        "bad = [m for m in ('uvicorn', 'h2', 'trio', 'respx', 'epic_fhir_async.sandbox',"
        " 'epic_fhir_async.cli') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
