"""The package's structure holds its rules: no import circles, one HTTP chokepoint, a CLI on public names only.

Read from the source with ``ast`` (nothing is imported), so a new module that breaks a rule fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import epic_fhir_async

PACKAGE = Path(epic_fhir_async.__file__).resolve().parent
PUBLIC_NAMESPACES = {
    "epic_fhir_async",
    "epic_fhir_async.auth",
    "epic_fhir_async.pull",
    "epic_fhir_async.bulk",
    "epic_fhir_async.directory",
    "epic_fhir_async.models",
    "epic_fhir_async.fleet",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(name: str, path: Path, *, runtime_only: bool = False) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every ``import``/``from ... import`` of ``path``; with ``runtime_only``, not
    those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found: list[tuple[str, list[str]]] = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            target = _resolve(name, is_package, node)
            found.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for target, names in _imports(name, path):
            if not target.startswith("epic_fhir_async"):
                continue
            # "from . import _json" imports a module; "from .x import name" imports from module x
            submodules = {f"{target}.{n}" for n in names} & modules.keys()
            edges |= submodules
            if target in modules and (len(submodules) < len(names) or not names):
                edges.add(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_sandbox_imports_nothing_of_the_client() -> None:
    allowed = {"epic_fhir_async._config", "epic_fhir_async._json", "epic_fhir_async._version"}
    for name, path in _modules().items():
        if not name.startswith("epic_fhir_async.sandbox"):
            continue
        for target, names in _imports(name, path):
            if target.startswith("epic_fhir_async") and not target.startswith("epic_fhir_async.sandbox"):
                modules = {target} if target != "epic_fhir_async" else {f"{target}.{n}" for n in names}
                assert modules <= allowed, f"{name} imports {target} {names}"


def test_the_command_line_imports_only_public_names() -> None:
    for name, path in _modules().items():
        if not name.startswith("epic_fhir_async.cli"):
            continue
        for target, names in _imports(name, path):
            if not target.startswith("epic_fhir_async") or target.startswith("epic_fhir_async.cli"):
                continue
            assert target in PUBLIC_NAMESPACES | {"epic_fhir_async.sandbox"}, f"{name} imports {target}"
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            assert private == [], f"{name} imports private names {private} from {target}"


def _calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]


def _sdk_modules() -> dict[str, Path]:
    # The emulator is a server of its own and the CLI a user of the public API: the rules are the library's.
    return {
        n: p
        for n, p in _modules().items()
        if not n.startswith(("epic_fhir_async.sandbox", "epic_fhir_async.cli"))
    }


def test_only_the_http_session_sends_on_the_httpx_client() -> None:
    senders = set()
    for name, path in _sdk_modules().items():
        for call in _calls(path):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == "send" and "http" in ast.unparse(func.value):
                senders.add(name)
    assert senders == {"epic_fhir_async._http"}


def test_only_the_http_session_turns_httpx_exceptions_into_transport_errors() -> None:
    builders = set()
    for name, path in _sdk_modules().items():
        for call in _calls(path):
            if isinstance(call.func, ast.Name) and call.func.id in {"TransportError", "RequestTimeout"}:
                builders.add(name)
    assert builders == {"epic_fhir_async._http"}


def test_nothing_reaches_into_httpx_private_attributes() -> None:
    offenders = []
    for name, path in _sdk_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"_transport", "_pool", "_transport_for_url"}:
                offenders.append(f"{name}: .{node.attr}")
    assert offenders == []


def test_every_sdk_retry_loop_takes_its_numbers_from_the_retry_module() -> None:
    # A loop of its own shows as a module constant named like one; the policies live in _retry.
    offenders = []
    for name, path in _sdk_modules().items():
        if name == "epic_fhir_async._retry":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and any(
                        word in target.id for word in ("RETRIES", "ATTEMPTS", "RETRY_DELAY", "BACKOFF")
                    ):
                        offenders.append(f"{name}.{target.id}")
    assert offenders == []


def test_the_top_level_namespace_stays_small() -> None:
    assert len(epic_fhir_async.__all__) <= 55
