"""Typed FHIR models, opt-in: the ``models`` extra (``pip install 'epic-fhir-async[models]'``).

Plain dicts stay the default: they are what orjson returns and what keeps searches fast. When you want
validated objects with attributes, ask for them, one resource at a time::

    patient = await client.read("Patient", pid, model=True)         # fhir.resources.R4B.patient.Patient
    async for obs in client.search("Observation", patient=pid, category="laboratory").models():
        value = obs.valueQuantity.value if obs.valueQuantity else None   # typed attributes
        raw(obs)                                                     # the dict Epic sent, untouched

The models are fhir.resources' pydantic classes (https://pypi.org/project/fhir.resources/) for FHIR
**R4B** (4.3), which reads R4 (4.0.1) JSON (R4B's changes sit in resources Epic's R4 API does not offer). Each
resource is converted when the iteration reaches it (a page of 1000 is never converted at once), and a
resource the models reject raises :class:`ModelValidationError` naming the elements, never their values.
What the models reject that Epic can send is listed in the documentation ("Typed models").

Not imported by ``import epic_fhir_async``, and it does not import fhir.resources until a model is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError, ModelValidationError
from ._urls import check_type

if TYPE_CHECKING:
    from fhir.resources.R4B.resource import Resource

__all__ = [
    "FHIR_RELEASE",
    "ModelStream",
    "ModelValidationError",
    "model_class",
    "models",
    "raw",
    "to_model",
]

#: The FHIR release of the models (fhir.resources' subpackage): R4B reads Epic's R4 JSON.
FHIR_RELEASE = "R4B"
_PACKAGE = "fhir.resources.R4B"
_RAW = "_epic_fhir_raw"  # where a model keeps the dict it was made from (not a field: never serialised)
_EXTRA_HINT = "typed models need the models extra: pip install 'epic-fhir-async[models]'"
_classes: dict[str, type[Resource]] = {}


def model_class(resource_type: str) -> type[Resource]:
    """The fhir.resources R4B class for ``resource_type`` (``"Patient"`` → ``Patient``)."""
    cached = _classes.get(resource_type)
    if cached is not None:
        return cached
    name = check_type(resource_type)
    try:
        package = importlib.import_module(_PACKAGE)
    except ImportError:
        raise ConfigurationError(_EXTRA_HINT) from None
    try:
        cls: type[Resource] = package.get_fhir_model_class(name)
    except (KeyError, ValueError, ImportError, AttributeError):
        raise ConfigurationError(
            f"fhir.resources has no FHIR {FHIR_RELEASE} model for {name!r} (a type R4B renamed or removed?)"
        ) from None
    _classes[resource_type] = cls
    return cls


def _problems(exc: Exception) -> tuple[tuple[str, str], ...]:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return (("", type(exc).__name__),)
    # Only where and which kind: pydantic's messages and "input" can quote the resource's values.
    return tuple((".".join(str(part) for part in e.get("loc", ())), str(e.get("type", ""))) for e in errors())


def to_model(resource: Mapping[str, Any]) -> Resource:
    """Validate one resource dict into its fhir.resources R4B model; :func:`raw` gives the dict back.

    Raises :class:`ModelValidationError` (a ``ValueError``) when the models reject it, and
    :class:`~epic_fhir_async.ConfigurationError` without the ``models`` extra or for a dict that is not a
    resource.
    """
    resource_type = resource.get("resourceType") if isinstance(resource, Mapping) else None
    if not isinstance(resource_type, str):
        raise ConfigurationError("to_model takes a FHIR resource: a dict with a resourceType")
    cls = model_class(resource_type)
    try:
        model = cls.model_validate(resource)
    except ValueError as exc:  # pydantic.ValidationError, without importing pydantic here
        problems = _problems(exc)
        shown = "; ".join(f"{loc or '(resource)'}: {kind}" for loc, kind in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ModelValidationError(
            f"a {resource_type} that fhir.resources' FHIR {FHIR_RELEASE} model rejects: {shown}{more}; "
            "the dict is on the error's .resource",
            resource_type=resource_type,
            problems=problems,
            resource=resource,
        ) from None
    # Not a pydantic field (it would be validated and serialised): an attribute beside the fields.
    object.__setattr__(model, _RAW, resource)
    return model


def raw(model: Resource) -> dict[str, Any]:
    """The dict a model was made from, as the server sent it (later changes to the model are not in it)."""
    found: dict[str, Any] | None = getattr(model, "__dict__", {}).get(_RAW)
    if found is None:
        raise ConfigurationError("raw() takes a model made by epic_fhir_async.models (to_model, models())")
    return found


class ModelStream:
    """``async for model in ModelStream(resources)``: each dict of ``resources`` becomes a model when the
    iteration reaches it. ``aclose()`` closes the source (a search's connection, a bulk file stream)."""

    __slots__ = ("_iterator", "_source")

    def __init__(self, resources: AsyncIterable[Mapping[str, Any]]) -> None:
        self._source = resources
        self._iterator: AsyncIterator[Mapping[str, Any]] | None = None

    def __aiter__(self) -> ModelStream:
        return self

    async def __anext__(self) -> Resource:
        if self._iterator is None:
            self._iterator = aiter(self._source)
        return to_model(await anext(self._iterator))

    async def aclose(self) -> None:
        target = self._iterator if self._iterator is not None else self._source
        close = getattr(target, "aclose", None)
        if close is not None:
            await close()


def models(resources: AsyncIterable[Mapping[str, Any]]) -> ModelStream:
    """Typed models of any async iterable of resource dicts, converted lazily: a search (also
    ``query.models()``), ``job.resources()`` of a bulk export, your own stream."""
    return ModelStream(resources)
