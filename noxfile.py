"""Developer sessions; CI runs them as they are (``nox -s lint typing docs tests``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typing", "tests"]

PY = "3"
SOURCES = ["epic_fhir_async", "tests", "benchmarks", "examples", "noxfile.py"]
EXAMPLES = Path(__file__).resolve().parent / "examples"


@nox.session(python=PY)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session(python=PY)
def typing(session: nox.Session) -> None:
    """mypy --strict over the package, the tests, the examples and the benchmarks."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict")


@nox.session(python=PY)
def tests(session: nox.Session) -> None:
    """pytest on asyncio and trio, with branch coverage."""
    session.install("-e", ".[dev]")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "report", "--fail-under=80")


@nox.session(python=PY)
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ with ``mkdocs build --strict``: a broken link, a missing page or
    an API reference that does not resolve fails. ``-- serve`` serves it on 127.0.0.1:8000 instead."""
    session.install("-e", ".[docs]")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", "--strict", "--dev-addr", "127.0.0.1:8000")
        return
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=PY)
def bench(session: nox.Session) -> None:
    """Benchmarks: ratios against baselines measured in the same run (never part of the tests)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PY)
def soak(session: nox.Session) -> None:
    """Pulls and bulk exports against the sandbox on 127.0.0.1 with every fault on (~90 s; not run by CI).

    Prints requests, faults by kind, retries, resources expected/received, lost, duplicated and leaked, and
    fails unless the last three are zero. Options after ``--``: ``--seconds``, ``--patients``, ``--backend trio``.
    """
    session.install("-e", ".[dev]")
    session.run("python", "-m", "benchmarks.soak", *session.posargs)


@nox.session(python=PY)
def examples(session: nox.Session) -> None:
    """Run every ``examples/*.py`` offline against the embedded sandbox, from a scratch directory.

    Installs the package and FastAPI only (the examples need nothing else). ``EPIC_FHIR_*`` variables are
    removed so that no example reaches a real Epic server; ``fastapi_app.py`` is skipped, with a warning,
    when FastAPI is not importable (``--no-install`` on a venv without it).
    """
    session.install("-e", ".", "fastapi")
    has_fastapi = session.run(
        "python", "-c", "import importlib.util as u; print(u.find_spec('fastapi') is not None)", silent=True
    )
    offline: dict[str, str | None] = {k: None for k in os.environ if k.startswith("EPIC_FHIR_")}
    for path in sorted(EXAMPLES.glob("*.py")):
        if path.name == "fastapi_app.py" and str(has_fastapi).strip() != "True":
            session.warn(f"skipping {path.name}: pip install fastapi to run it")
            continue
        # A fresh directory each time: pull_patients.py resumes from a checkpoint file it leaves behind.
        with tempfile.TemporaryDirectory(dir=session.create_tmp()) as scratch, session.chdir(scratch):
            session.run("python", str(path), env=offline)
