"""The documentation site, checked as a reader meets it: built with ``mkdocs build --strict`` into site/, the API
reference holding every public name and no private one, the command lines of the guides accepted by the real
parser, and the pages opened in headless Chromium (Debian's package, driven over the DevTools protocol by
tests/_chromium.py) from a server on 127.0.0.1: the reference page of ``EpicFHIRClient`` shows its methods and
the site search finds them. Screenshots are kept under site/screenshots/.

Without a ``chromium`` binary the browser test is skipped, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import functools
import http.server
import importlib
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import epic_fhir_async
import epic_fhir_async.auth

from .._chromium import Page, chromium
from .._processes import missing

ROOT = Path(__file__).resolve().parent.parent.parent
SITE = ROOT / "site"
README = (ROOT / "README.md").read_text(encoding="utf-8")
NAMESPACES = ("epic_fhir_async", "auth", "pull", "bulk", "sandbox", "directory", "models")
_ID = re.compile(r'id="(epic_fhir_async[\w.]*)"')

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site() -> Path:
    """``mkdocs build --strict`` into site/, as ``nox -s docs`` does (a subprocess: the plugins' own warnings
    are MkDocs' business, not this test run's)."""
    try:
        importlib.import_module("mkdocs")
    except ImportError:
        missing("mkdocs is not installed (pip install -e '.[docs]')")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(SITE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    return SITE


def _reference_ids(site: Path) -> set[str]:
    ids: set[str] = set()
    for page in (site / "reference").rglob("index.html"):
        ids |= set(_ID.findall(page.read_text(encoding="utf-8")))
    return ids


def test_the_api_reference_documents_every_public_name_and_no_private_one(site: Path) -> None:
    ids = _reference_ids(site)
    missing = []
    for namespace in NAMESPACES:
        module = (
            epic_fhir_async
            if namespace == "epic_fhir_async"
            else importlib.import_module(f"epic_fhir_async.{namespace}")
        )
        for name in module.__all__:
            if name == "__version__" or f"{module.__name__}.{name}" in ids:
                continue
            # The auth methods re-exported at the top level are documented once, under epic_fhir_async.auth.
            same = getattr(epic_fhir_async.auth, name, None) is getattr(module, name)
            if namespace == "epic_fhir_async" and same and f"epic_fhir_async.auth.{name}" in ids:
                continue
            missing.append(f"{module.__name__}.{name}")
    assert not missing, f"public names without a reference entry: {missing}"
    private = sorted(
        i for i in ids if any(p.startswith("_") and not p.startswith("__") for p in i.split("."))
    )
    assert not private, f"private names in the reference: {private[:10]}"
    assert {"epic_fhir_async.EpicFHIRClient.read", "epic_fhir_async.EpicFHIRClient.search"} <= ids


def test_the_getting_started_page_is_the_readmes_two_commands(site: Path) -> None:
    def commands(text: str) -> str:
        section = text.split("## Set-up: two commands", 1)[1]
        found = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
        assert found is not None
        return found[1]

    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    assert commands(page) == commands(README)
    html = (site / "getting-started" / "index.html").read_text(encoding="utf-8")
    assert "pip install nox &amp;&amp; nox -s lint typing tests" in re.sub(r"<[^>]+>", "", html)
    assert "](docs/index.md)" in README  # the README points to the site
    assert "nox -s docs" in README


def _command_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        lines += [line.strip() for line in block.splitlines() if line.strip().startswith("epic-fhir ")]
    return lines


def test_every_command_line_of_the_guides_parses() -> None:
    from epic_fhir_async.cli._main import build_parser

    lines = {page.name: _command_lines(page) for page in sorted((ROOT / "docs").glob("*.md"))}
    assert len(lines["cli.md"]) >= 10
    for page, commands in lines.items():
        for line in commands:
            args = shlex.split(line.split("  #", 1)[0])[1:]
            try:
                parsed = build_parser().parse_args(args)
            except SystemExit as exc:
                pytest.fail(f"docs/{page}: `{line}` does not parse (exit {exc.code})")
            assert getattr(parsed, "func", None) is not None, line


# -- in a browser ------------------------------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as page:
        yield page


def test_the_client_reference_page_shows_its_methods(browser: Page, served: str, site: Path) -> None:
    browser.load(f"{served}/reference/client/")
    shown = browser.evaluate(
        """Array.from(document.querySelectorAll('[id^="epic_fhir_async.EpicFHIRClient."]'))
              .filter(e => e.getBoundingClientRect().height > 0).map(e => e.id)"""
    )
    for method in ("read", "search", "pull", "bulk_export", "operation", "aclose"):
        assert f"epic_fhir_async.EpicFHIRClient.{method}" in shown
    text = browser.evaluate("document.querySelector('article').innerText")
    assert "Async client for an Epic FHIR R4 server" in text
    assert ":class:" not in text
    browser.screenshot(site / "screenshots" / "reference-client.png")


def test_the_site_search_finds_a_method(browser: Page, served: str, site: Path) -> None:
    browser.load(f"{served}/")
    browser.wait_for("document.querySelector('input.md-search__input') !== null")
    browser.evaluate(
        """(() => {
            const input = document.querySelector('input.md-search__input');
            document.querySelector('label.md-header__button[for="__search"]')?.click();
            input.focus();
            input.value = 'bulk_export';
            for (const kind of ['input', 'keyup', 'change']) input.dispatchEvent(new Event(kind, {bubbles: true}));
        })()"""
    )
    titles = browser.wait_for(
        """(() => {
            const items = Array.from(document.querySelectorAll('.md-search-result__item'));
            return items.length ? items.map(i => i.innerText) : null;
        })()"""
    )
    assert any("bulk_export" in t for t in titles), titles[:5]
    browser.screenshot(site / "screenshots" / "search-bulk_export.png")
