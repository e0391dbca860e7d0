"""Package names imported on first use (a module-level ``__getattr__``, PEP 562): ``import epic_fhir_async``
does not pay for modules a job never uses (docs/performance.md)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, lazy: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``package``'s ``__getattr__`` and ``__dir__`` for the names in ``lazy`` (name → submodule of ``package``).

    A name's module is imported when the name is first looked up; the value is then stored in ``namespace``
    (the package's ``globals()``), so later lookups are plain attribute reads. Any other name is an
    ``AttributeError``, as on any module.
    """

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *lazy})

    return __getattr__, __dir__
