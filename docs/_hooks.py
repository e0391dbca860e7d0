"""MkDocs hooks for the site (mkdocs.yml ``hooks:``; not a page: ``exclude_docs`` leaves ``*.py`` out).

* The docstrings are written for Python's ``help()`` and Sphinx-style roles (``:class:`~epic_fhir_async.X```);
  mkdocstrings renders them as Markdown, where a role shows up as ``:class:`` before a code span. The role
  prefix is dropped and the code span keeps the name as written, without a leading ``~``; the ``::`` that
  introduces a literal block becomes ``:``.
* The reference pages of the top-level namespace list its names from ``epic_fhir_async.__all__`` at build time
  (a ``<!-- api: errors -->`` or ``<!-- api: client -->`` line), so a new public name is documented without
  editing a page: the errors in the order of the tree, the rest with the client first. The auth methods that
  the top level re-exports are documented once, under ``epic_fhir_async.auth``.
* docs/epic-notes.md cites its sources as ``[MAP]``, ``[obs]``, ... (plain text on GitHub). Markdown reads
  those as reference links, which autorefs then fails to resolve: they are escaped on that page, outside
  code, before rendering.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj|const):(<code>)~?")
_CITATION = re.compile(r"(?<![\\!\]])\[([A-Za-z][\w.-]*)\](?![(\[:])")
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.DOTALL)


_API = re.compile(r"^<!-- api: (errors|client) -->$", re.MULTILINE)
_CLIENT_FIRST = ("EpicFHIRClient", "SearchQuery", "Page", "RetryPolicy", "RetryTransport", "OperationOutcome")


def _top_level(kind: str) -> str:
    package = importlib.import_module("epic_fhir_async")
    auth = importlib.import_module("epic_fhir_async.auth")
    names = [n for n in package.__all__ if n != "__version__"]

    def is_error(name: str) -> bool:
        value = getattr(package, name)
        return isinstance(value, type) and issubclass(value, BaseException)

    if kind == "errors":
        chosen = sorted(filter(is_error, names), key=lambda n: inspect.getsourcelines(getattr(package, n))[1])
    else:
        rest = [n for n in names if not is_error(n) and getattr(auth, n, None) is not getattr(package, n)]
        chosen = sorted(rest, key=lambda n: (_CLIENT_FIRST.index(n) if n in _CLIENT_FIRST else 99, n))
    return "\n\n".join(f"::: epic_fhir_async.{name}" for name in chosen)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri.startswith("reference/"):
        return _API.sub(lambda m: _top_level(m[1]), markdown)
    if page.file.src_uri != "epic-notes.md":
        return markdown
    parts = _CODE.split(markdown)  # odd indexes are code: left alone
    return "".join(p if i % 2 else _CITATION.sub(r"\\[\1\\]", p) for i, p in enumerate(parts))


def on_page_content(html: str, **kwargs: Any) -> str:
    # reST's "text::" before a literal block reads as "text:" once the block is rendered as code.
    return _ROLE.sub(r"\1", html).replace("::</p>", ":</p>")
