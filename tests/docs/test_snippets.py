"""Every ```python block of README.md, docs/sandbox.md and the site's guides runs, offline, against the
embedded sandbox.

A block's kind is set by an HTML comment on the line just above its fence (invisible on GitHub and PyPI):

* no marker: a complete snippet (imports included). It runs as written; top-level ``await`` is allowed, as in
  ``python -m asyncio``. Test functions (``test_*``) it defines are then called.
* ``<!-- docs-test: fragment -->``: a piece of a larger program. It runs with the public names of
  ``epic_fhir_async`` and a context the surrounding text implies (:func:`_fragment_names`): ``client``,
  ``auth``, ``BASE``, ``pid``, ... all wired to a sandbox in-process.
* ``<!-- docs-test: pytest -->``: files for a user's test suite, each introduced by a ``# name.py`` line; they
  run in a child pytest (pytester).
* ``<!-- docs-test: skip: why -->``: needs a real Epic server, a key file or a web framework's request.

Only loopback is reachable while a snippet runs: a block that tries the network fails instead of hanging.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import ipaddress
import re
import socket
import textwrap
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import epic_fhir_async
from epic_fhir_async import EpicFHIRClient, StaticTokenAuth
from epic_fhir_async.sandbox import EpicSandbox

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent.parent
#: The site's guides (mkdocs.yml) with Python in them; docs/cli.md's command lines are checked by test_site.py.
GUIDES = (
    "docs/getting-started.md",
    "docs/search.md",
    "docs/pull.md",
    "docs/bulk.md",
    "docs/auth.md",
    "docs/testing.md",
    "docs/errors.md",
    "docs/directory.md",
    "docs/models.md",
    "docs/performance.md",
)
DOCS = ("README.md", "docs/sandbox.md", *GUIDES)
CAMILA = "erXuFYUfucBZaryVksYEcMg3"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>skip|fragment|pytest)\b(?P<rest>.*?)-->\s*$")
_FILE_HEADER = re.compile(r"^# (?P<name>[\w/]+\.py)\s*$")


@dataclass(frozen=True)
class Snippet:
    doc: str
    line: int  # 1-based line of the opening fence
    kind: str  # "run", "fragment", "pytest", "skip"
    reason: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def extract(doc: str, text: str) -> list[Snippet]:
    """The ```python blocks of ``text`` with the kind their marker gives them."""
    lines = text.splitlines()
    found: list[Snippet] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{doc}:{i + 1}: unclosed code fence"
        if fence["lang"] == "python":
            marker = _MARKER.match(lines[i - 1]) if i else None
            kind, reason = ("run", "") if marker is None else (marker["kind"], marker["rest"].strip(" :"))
            code = textwrap.dedent("\n".join(lines[i + 1 : end]))
            found.append(Snippet(doc, i + 1, kind, reason, code))
        i = end + 1
    return found


SNIPPETS = [s for doc in DOCS for s in extract(doc, (ROOT / doc).read_text(encoding="utf-8"))]


def _ids(kind: str) -> list[Any]:
    return [pytest.param(s, id=s.id) for s in SNIPPETS if s.kind == kind]


# -- the extractor itself ------------------------------------------------------------------------------------


def test_extract_reads_markers_and_indented_blocks() -> None:
    text = "\n".join(
        [
            "```python",
            "a = 1",
            "```",
            "<!-- docs-test: skip: needs Epic -->",
            "```python",
            "b = 2",
            "```",
            "```bash",
            "echo no",
            "```",
            "1. step",
            "   <!-- docs-test: fragment -->",
            "   ```python",
            "   c = 3",
            "   ```",
        ]
    )
    snippets = extract("x.md", text)
    assert [(s.kind, s.reason, s.code, s.line) for s in snippets] == [
        ("run", "", "a = 1", 1),
        ("skip", "needs Epic", "b = 2", 5),
        ("fragment", "", "c = 3", 13),
    ]


def test_every_doc_has_runnable_snippets_and_skips_say_why() -> None:
    for doc in DOCS:
        kinds = {s.kind for s in SNIPPETS if s.doc == doc}
        assert "run" in kinds, f"{doc}: no complete snippet is checked"
    assert all(s.reason for s in SNIPPETS if s.kind == "skip"), "a skip marker must say why"


# -- running them ----------------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection or DNS lookup beyond 127.0.0.1 / ::1 fails at once (the docs must run offline)."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(str(address[0])):
            raise OSError(f"docs snippets must not reach the network (connect to {address[0]})")
        real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host or "")
        if not _is_loopback(name):
            raise socket.gaierror(f"docs snippets must not reach the network (lookup of {name})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _compile(snippet: Snippet) -> types.CodeType:
    try:
        code: types.CodeType = compile(
            snippet.code, f"<{snippet.id}>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
    except SyntaxError as exc:
        pytest.fail(f"{snippet.id}: not valid Python ({exc.msg}, snippet line {exc.lineno})")
    return code


async def _execute(code: types.CodeType, namespace: dict[str, Any]) -> None:
    result = eval(code, namespace)  # our own documentation
    if inspect.iscoroutine(result):  # top-level await
        await result


async def _call_tests(namespace: dict[str, Any]) -> list[str]:
    """Call the argument-free ``test_*`` functions a snippet defines (awaiting the async ones)."""
    called = []
    for name, value in list(namespace.items()):
        if name.startswith("test_") and inspect.isfunction(value):
            result = value()
            if inspect.isawaitable(result):
                await result
            called.append(name)
    return called


@pytest.fixture
def offline(loopback_only: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback only, in a scratch directory (snippets write checkpoints and export files)."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("snippet", _ids("run"))
def test_complete_snippet_runs(snippet: Snippet, anyio_backend: str, offline: None) -> None:
    code = _compile(snippet)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    if code.co_flags & inspect.CO_COROUTINE:
        anyio.run(_execute, code, namespace, backend=anyio_backend)
    else:  # a script: it may call anyio.run itself
        eval(code, namespace)  # our own documentation
    anyio.run(_call_tests, namespace, backend=anyio_backend)


@contextlib.asynccontextmanager
async def _fragment_names(sandbox: EpicSandbox) -> AsyncIterator[dict[str, Any]]:
    """What the prose around a fragment has already set up, on ``sandbox``."""
    auth = StaticTokenAuth(sandbox.issue_token("docs-snippets"))
    async with EpicFHIRClient(sandbox.base_url, auth=auth, transport=sandbox.transport()) as client:
        notes = client.search("DocumentReference", patient=CAMILA)
        names: dict[str, Any] = {name: getattr(epic_fhir_async, name) for name in epic_fhir_async.__all__}
        names.update(
            __name__="__docs__",
            anyio=anyio,
            sb=sandbox,
            BASE=sandbox.base_url,
            auth=auth,
            client=client,
            pid=CAMILA,
            patient_ids=list(sandbox.dataset.patient_ids)[:3],
            GROUP_ID=sandbox.dataset.group_id,
            doc_ref=await notes.first(),
            match_parameters={
                "resourceType": "Parameters",
                "parameter": [
                    {
                        "name": "resource",
                        "resource": {"resourceType": "Patient", "name": [{"family": "Lopez"}]},
                    }
                ],
            },
            handle=lambda *args: None,
            save=lambda *args: None,
        )
        yield names


@pytest.mark.parametrize("snippet", _ids("fragment"))
def test_fragment_runs_in_context(
    snippet: Snippet, anyio_backend: str, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = _compile(snippet)
    sandbox = EpicSandbox(seed=0, patients=3)
    sandbox.bulk.export_seconds = 0.0
    # A fragment's own `EpicFHIRClient(BASE, auth=auth)` builds an httpx.AsyncHTTPTransport: route it to the
    # sandbox in-process (serving it on a port costs ~0.2 s of uvicorn shutdown per fragment and backend).
    monkeypatch.setattr(httpx, "AsyncHTTPTransport", lambda **_: sandbox.transport())

    async def run() -> None:
        async with _fragment_names(sandbox) as names:
            await _execute(code, names)

    anyio.run(run, backend=anyio_backend)


def _files(snippet: Snippet) -> Iterator[tuple[str, str]]:
    name, body = "", []
    for line in [*snippet.code.splitlines(), "# end.py"]:
        header = _FILE_HEADER.match(line)
        if header is None:
            body.append(line)
            continue
        if name:
            yield name, "\n".join(body).strip() + "\n"
        name, body = header["name"], []


@pytest.mark.parametrize("snippet", _ids("pytest"))
def test_pytest_snippet_passes(
    snippet: Snippet, pytester: pytest.Pytester, loopback_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = dict(_files(snippet))
    assert any(n.startswith("test_") for n in files), f"{snippet.id}: no '# test_*.py' file in the block"
    for name, body in files.items():
        pytester.path.joinpath(name).write_text(body, encoding="utf-8")
    # Only anyio's plugin, which a user's environment loads too: the others installed here (hypothesis's
    # end-of-run summary above all) would cost seconds. The SDK's plugin may already be imported by another
    # test of this session, and then pytest cannot rewrite its asserts: that warning is not the docs' fault.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_inprocess(
        "-p", "anyio", "-p", "no:cacheprovider", "-q", "-W", "error",
        "-W", "ignore::pytest.PytestAssertRewriteWarning",
    )  # fmt: skip
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) > 0
    assert not {"failed", "errors", "error", "skipped"} & outcomes.keys(), result.stdout.str()
