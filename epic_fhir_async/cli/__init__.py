"""The ``epic-fhir`` command line. Thin: every command calls only the public API (and the sandbox)."""

from __future__ import annotations

from ._main import main as main

__all__ = ["main"]
