"""The documentation says what the code does: signatures, module map, links, plugin behaviour, packaging."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

from epic_fhir_async import EpicFHIRClient

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGE = ROOT / "epic_fhir_async"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _shape(signature: inspect.Signature) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in signature.parameters.values() if p.name != "self"]


def test_readme_shows_the_real_client_signature() -> None:
    found = re.search(r"```\n(EpicFHIRClient\(.*?\))\n```", README, re.DOTALL)
    assert found is not None, "README: the EpicFHIRClient(...) signature block is missing"
    namespace: dict[str, Any] = {}
    exec(f"def documented({found[1].removeprefix('EpicFHIRClient(')}: pass", namespace)
    documented = _shape(inspect.signature(namespace["documented"]))
    assert documented == _shape(inspect.signature(EpicFHIRClient.__init__))


def test_architecture_page_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not describe {missing}"
    assert "](docs/architecture.md)" in README


def test_relative_links_in_the_docs_resolve() -> None:
    docs = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.name}: {target}")
    assert not broken


def _is_private(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "epic_fhir_async" and any(p.startswith("_") and not p.startswith("__") for p in parts)


def test_examples_use_the_public_api_only() -> None:
    private = []
    for path in sorted((ROOT / "examples").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            private += [f"{path.name}: {name}" for name in names if _is_private(name)]
    assert not private
    assert _is_private("epic_fhir_async._config.EPIC_SANDBOX_BASE_URL")
    assert not _is_private("epic_fhir_async.__version__")


def test_plugin_leaves_anyio_backend_to_the_user() -> None:
    # README ("Trio"): without a fixture of their own, anyio's default runs users' tests on asyncio only.
    # Not imported here: a plugin module imported early cannot be assertion-rewritten in a later pytester run.
    plugin = ast.parse((PACKAGE / "testing.py").read_text(encoding="utf-8"))
    assert "anyio_backend" not in {n.name for n in ast.walk(plugin) if isinstance(n, ast.FunctionDef)}
    assert "asyncio only" in README
    assert "anyio_backend" in README


def _toml_list(section: str, key: str) -> list[str]:
    """A list of strings from pyproject.toml (tomllib is 3.11+; the tests run on 3.10 too)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
    found = re.search(rf"^{key} = \[(.*?)\]$", body, re.DOTALL | re.MULTILINE)
    assert found is not None, f"pyproject.toml: no {key} in [{section}]"
    return re.findall(r'"([^"]+)"', found[1])


def test_sdist_ships_the_docs_and_the_wheel_only_the_package() -> None:
    include = _toml_list("tool.hatch.build.targets.sdist", "include")
    for needed in (
        "epic_fhir_async",
        "tests",
        "examples",
        "docs",
        "benchmarks",
        "SECURITY.md",
        "CHANGELOG.md",
    ):
        assert needed in include
    assert all((ROOT / entry).exists() for entry in include)
    assert "*.pem" in _toml_list("tool.hatch.build.targets.sdist", "exclude")
    assert _toml_list("tool.hatch.build.targets.wheel", "packages") == ["epic_fhir_async"]
