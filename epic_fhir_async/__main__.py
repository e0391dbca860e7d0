"""``python -m epic_fhir_async`` runs the ``epic-fhir`` command line."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
