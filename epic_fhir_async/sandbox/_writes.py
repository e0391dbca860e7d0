"""Create, update and Binary reads, with Epic's rules (docs/epic-notes.md §3.9, §3.10).

Writes go to the sandbox's own copy of the dataset (never the cached, shared one) and invalidate the
rendered-entry cache, so later reads, searches and exports see them.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from typing import Any

from .. import _json
from ._data import Dataset
from ._data_ids import long_id, short_id
from ._http import Request, Response, outcome, outcome_issue
from ._paging import Pager
from ._render import fhir_response

__all__ = ["Writer"]

_PATIENT_FIELDS = ("subject", "patient")


def _bad_json() -> dict[str, Any]:
    return outcome(
        outcome_issue(
            "fatal",
            "structure",
            "59105",
            "Invalid JSON syntax.",
            diagnostics="The request body is not valid JSON.",
        )
    )


def _invalid(diagnostics: str) -> dict[str, Any]:
    return outcome(outcome_issue("fatal", "invalid", "59102", "Invalid content.", diagnostics=diagnostics))


class Writer:
    """Epic-style create/update on the sandbox's dataset, and ``GET Binary/<id>``."""

    def __init__(self, dataset: Dataset, pager: Pager, base_url: Callable[[], str], *, seed: int = 0) -> None:
        self.dataset = dataset
        self.pager = pager
        self.base_url = base_url
        self._rng = random.Random(f"writes-{seed}")  # noqa: S311 - ids, not secrets

    def _body(self, request: Request, rtype: str) -> dict[str, Any] | Response:
        try:
            body = _json.loads(request.body)
        except _json.JSONDecodeError:
            return fhir_response(request, _bad_json(), 400)
        if not isinstance(body, dict):
            return fhir_response(request, _bad_json(), 400)
        if body.get("resourceType") != rtype:
            return fhir_response(request, _invalid(f"The resourceType must be {rtype}."), 400)
        body.pop("meta", None)  # docs/epic-notes.md §3.11: Epic resources carry no meta
        return body

    def _patient_of(self, resource: dict[str, Any]) -> str | None:
        for name in _PATIENT_FIELDS:
            ref = resource.get(name)
            if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Patient/"):
                return str(ref["reference"]).split("/", 1)[1]
        return None

    def _result(self, request: Request, status: int, resource: dict[str, Any], location: str) -> Response:
        headers = [("location", location)]
        if "return=representation" in request.headers.get("prefer", ""):
            return fhir_response(request, resource, status, headers=headers)
        return Response(status, headers)

    def create(self, request: Request, rtype: str) -> Response:
        """``POST <Type>`` → 201 + ``Location`` with a server-assigned Epic-style id."""
        body = self._body(request, rtype)
        if isinstance(body, Response):
            return body
        pid = self._patient_of(body)
        if rtype != "Patient" and pid is not None and pid not in self.dataset.resources.get("Patient", {}):
            return fhir_response(request, _invalid("The referenced patient was not found."), 400)
        if rtype == "AllergyIntolerance" and pid is not None and self._duplicate_allergy(pid, body):
            issue = outcome_issue(
                "fatal",
                "duplicate",
                "59141",
                "Duplicate resource.",
                diagnostics="The allergy already exists.",
            )
            return fhir_response(request, outcome(issue), 400)
        rid = short_id(self._rng) if rtype in ("Patient", "Encounter") else long_id(self._rng)
        body["id"] = rid
        self.dataset.resources.setdefault(rtype, {})[rid] = body
        if rtype == "Patient":
            self.dataset.by_patient.setdefault("Patient", {})
        elif pid is not None:
            self.dataset.by_patient.setdefault(rtype, {}).setdefault(pid, []).insert(0, rid)
        return self._result(request, 201, body, f"{self.base_url()}/{rtype}/{rid}")

    def _duplicate_allergy(self, pid: str, body: dict[str, Any]) -> bool:
        codes = {(c.get("system"), c.get("code")) for c in body.get("code", {}).get("coding", [])}
        pool = self.dataset.resources.get("AllergyIntolerance", {})
        for rid in self.dataset.by_patient.get("AllergyIntolerance", {}).get(pid, []):
            have = {(c.get("system"), c.get("code")) for c in pool[rid].get("code", {}).get("coding", [])}
            if codes & have:
                return True
        return False

    def update(self, request: Request, rtype: str, rid: str) -> Response:
        """``PUT <Type>/<id>`` on an existing resource (no update-as-create)."""
        pool = self.dataset.resources.get(rtype, {})
        if rid not in pool:
            issue = outcome_issue(
                "fatal", "not-found", "59008", "The FHIR ID provided was not found.",
                diagnostics="Invalid FHIR ID provided", location=["/f:id"], expression=["id"],
            )  # fmt: skip
            return fhir_response(request, outcome(issue), 404)
        body = self._body(request, rtype)
        if isinstance(body, Response):
            return body
        if body.get("id", rid) != rid:
            return fhir_response(request, _invalid("The resource id does not match the URL."), 400)
        body["id"] = rid
        old_pid, new_pid = self._patient_of(pool[rid]), self._patient_of(body)
        pool[rid] = body
        if old_pid != new_pid:
            index = self.dataset.by_patient.setdefault(rtype, {})
            if old_pid is not None and rid in index.get(old_pid, []):
                index[old_pid].remove(rid)
            if new_pid is not None:
                index.setdefault(new_pid, []).insert(0, rid)
        self.pager.invalidate(rtype, rid)
        return self._result(request, 200, body, f"{self.base_url()}/{rtype}/{rid}")

    def read_binary(self, request: Request, rid: str) -> Response:
        """Raw bytes when ``Accept`` names the stored type; a FHIR Binary (base64 ``data``) otherwise.

        As Epic answers ``Binary`` reads (docs/epic-notes.md §3.10).
        """
        stored = self.dataset.binaries.get(rid)
        if stored is None:
            issue = outcome_issue(
                "fatal", "not-found", "59144", "Referenced resource not found.",
                diagnostics="Invalid Binary ID provided", location=["/f:id"],
            )  # fmt: skip
            return fhir_response(request, outcome(issue), 404)
        ctype, data = stored
        accepted = [p.split(";")[0].strip().lower() for p in request.headers.get("accept", "").split(",")]
        if ctype.split(";")[0].lower() in accepted:
            return Response(200, [("content-type", ctype)], data)
        binary = {
            "resourceType": "Binary",
            "id": rid,
            "contentType": ctype,
            "data": base64.b64encode(data).decode("ascii"),
        }
        return fhir_response(request, binary)
