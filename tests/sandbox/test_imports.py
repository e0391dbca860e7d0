"""The sandbox never imports the SDK's client code: a mistake in the client must not hide the same one here.

Every module of ``epic_fhir_async/sandbox/`` is read as source (imports inside functions count too): outside
the sandbox it may use only the package's leaves (``_json``, ``_config`` and what they import), never
``_client``, ``_search``, ``_bundle``, ``_retry``, ``auth`` or any other client module. Each module also says,
in its docstring, which Epic behaviour it emulates.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import epic_fhir_async

PACKAGE_DIR = Path(epic_fhir_async.__file__).parent
SANDBOX_DIR = PACKAGE_DIR / "sandbox"
#: The leaves the sandbox may import (``_config`` and ``_json`` depend on nothing else in the package).
ALLOWED_OUTSIDE = frozenset({"epic_fhir_async._json", "epic_fhir_async._config", "epic_fhir_async._version"})
SANDBOX_MODULES = sorted(SANDBOX_DIR.glob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, *, is_package: bool = False) -> set[str]:
    """Every ``epic_fhir_async`` module that ``source`` (the module ``name``) imports, relative ones resolved."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                parent = ".".join([*base, node.module] if node.module else base)
            else:
                parent = node.module or ""
            # ``from pkg import name`` may name a submodule: count both (the parent is always loaded).
            found.add(parent)
            found.update(f"{parent}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "epic_fhir_async" or m.startswith("epic_fhir_async.")}


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE_DIR / relative).with_suffix(".py").is_file() or (PACKAGE_DIR / relative).is_dir()


def forbidden_imports(source: str, name: str, *, is_package: bool = False) -> set[str]:
    imported = {m for m in imported_modules(source, name, is_package=is_package) if is_module(m)}
    return {
        m
        for m in imported
        if not m.startswith("epic_fhir_async.sandbox") and m not in ALLOWED_OUTSIDE and m != "epic_fhir_async"
    }


def test_every_sandbox_module_is_checked() -> None:
    names = {module_name(path) for path in SANDBOX_MODULES}
    assert {
        "epic_fhir_async.sandbox",
        "epic_fhir_async.sandbox._app",
        "epic_fhir_async.sandbox._oauth",
    } <= names
    assert len(names) == len(list(SANDBOX_DIR.glob("*.py"))) > 30


@pytest.mark.parametrize("path", SANDBOX_MODULES, ids=lambda path: path.stem)
def test_sandbox_module_imports_no_client_code(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert forbidden_imports(source, module_name(path), is_package=path.stem == "__init__") == set()


@pytest.mark.parametrize("path", SANDBOX_MODULES, ids=lambda path: path.stem)
def test_sandbox_module_says_what_epic_behaviour_it_emulates(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring, f"{path.name} has no module docstring"
    # A module names Epic, or cites the repository's notes on Epic's behaviour.
    assert any(cite in docstring for cite in ("Epic", "docs/epic-notes.md")), path.name


def test_allowed_leaves_stay_leaves() -> None:
    for name in sorted(ALLOWED_OUTSIDE):
        path = (PACKAGE_DIR / name.rpartition(".")[2]).with_suffix(".py")
        imported = {m for m in imported_modules(path.read_text(encoding="utf-8"), name) if is_module(m)}
        assert imported <= ALLOWED_OUTSIDE | {"epic_fhir_async"}, name


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("from .._client import EpicFHIRClient", {"epic_fhir_async._client"}),
        ("from ..auth import _assertion", {"epic_fhir_async.auth", "epic_fhir_async.auth._assertion"}),
        ("def f():\n    from epic_fhir_async._retry import RetryPolicy", {"epic_fhir_async._retry"}),
        ("import epic_fhir_async._bundle", {"epic_fhir_async._bundle"}),
        ("from .. import _search", {"epic_fhir_async._search"}),
        ("from .. import _json\nfrom ._http import Request\nfrom .._config import FHIR_JSON", set()),
    ],
)
def test_the_check_catches_client_imports(source: str, bad: set[str]) -> None:
    assert forbidden_imports(source, "epic_fhir_async.sandbox._example") == bad
