"""Developer sessions; CI runs them as they are (``nox -s lint typing tests``)."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typing", "tests"]

PY = "3"
SOURCES = ["epic_fhir_async", "tests", "benchmarks", "examples", "noxfile.py"]


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
    """Run every example against the embedded sandbox."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "tests/test_examples.py", "-q")
