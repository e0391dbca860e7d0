"""FHIR REST under the R4 base: routing, bearer checks, reads and searches (docs/epic-notes.md §3).

Path layout and errors follow Epic: unknown types and unsupported paths (``$export`` outside a Group,
``$everything``) get the IIS HTML 404 (docs/epic-notes.md §3.7), everything FHIR-shaped gets an
OperationOutcome.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ._capability import CREATE_TYPES, RESOURCE_TYPES, UPDATE_TYPES, smart_configuration
from ._clock import SandboxClock
from ._data import Dataset
from ._http import JSON_UTF8, Request, Response, html_404, json_response, outcome, outcome_issue
from ._metadata import MetadataServer
from ._operations import match_patients, patient_summary
from ._paging import Pager, self_link_query
from ._render import fhir_response
from ._search import SearchFailure, run_search
from ._writes import Writer

__all__ = ["FhirServer"]

_NOT_FOUND = outcome_issue(
    "fatal", "not-found", "59008", "The FHIR ID provided was not found.",
    diagnostics="Invalid FHIR ID provided", location=["/f:id"], expression=["id"],
)  # fmt: skip
_SESSION_EXPIRED = outcome_issue(
    "fatal", "processing", "4113", "Session ID for cached search results has expired.",
    diagnostics="Session ID for cached search results has expired.",
)  # fmt: skip


class _BearerCheck(Protocol):
    client_id: str | None
    failure: Response | None


class _OAuth(Protocol):
    def check_bearer(self, authorization: str | None, resource_type: str | None) -> Any: ...
    def allowed_types(self, client_id: str) -> frozenset[str] | None: ...


class _Bulk(Protocol):
    def kickoff(self, request: Request, client_id: str, group_id: str) -> Response: ...
    def handle(self, request: Request, client_id: str, subpath: str) -> Response: ...


class FhirServer:
    """Answers every request under the FHIR base; ``base_url``/``oauth_url`` are callables (the port may move)."""

    def __init__(
        self,
        *,
        dataset: Dataset,
        oauth: _OAuth,
        bulk: _Bulk,
        base_url: Callable[[], str],
        oauth_url: Callable[[], str],
        clock: SandboxClock,
        stats: collections.Counter[str],
        page_size: int,
        max_page_size: int,
        session_ttl: float,
        seed: int = 0,
        warn_unknown: bool = False,
        outside_records: bool = True,
    ) -> None:
        self.dataset = dataset
        self.oauth = oauth
        self.bulk = bulk
        self.base_url = base_url
        self.oauth_url = oauth_url
        self.stats = stats
        self.page_size = page_size
        self.max_page_size = max_page_size
        self.warn_unknown = warn_unknown
        #: Epic's "Outside Record" 59204 warnings on clinical searchsets (docs/epic-notes.md §3.6).
        self.outside_records = outside_records
        self.pager = Pager(
            resources=dataset.resources, base_url=base_url, clock=clock, ttl=session_ttl, seed=seed
        )
        self.writer = Writer(dataset, self.pager, base_url, seed=seed)
        self.metadata = MetadataServer(base_url, oauth_url)

    def set_client_metadata(
        self, client_id: str, *, register: bool = True, oauth_uris: Mapping[str, str] | None = None
    ) -> None:
        """What ``/metadata`` shows for ``Epic-Client-ID: client_id`` (docs/epic-notes.md §2.1)."""
        self.metadata.set_client(client_id, register=register, oauth_uris=oauth_uris)

    def handle(self, request: Request, rest: str) -> Response:
        """``rest`` is the path after the FHIR base, without leading slash."""
        parts = [p for p in rest.split("/") if p]
        if not parts:
            return html_404()
        if parts == ["metadata"] and request.method == "GET":
            return self.metadata.respond(request)
        if parts == [".well-known", "smart-configuration"] and request.method == "GET":
            return json_response(smart_configuration(self.oauth_url()), content_type=JSON_UTF8)
        rtype = parts[0]
        if rtype == "BulkRequest":
            check = self.oauth.check_bearer(request.headers.get("authorization"), None)
            if check.failure is not None:
                return check.failure  # type: ignore[no-any-return]
            return self.bulk.handle(request, check.client_id, rest)
        if rtype not in RESOURCE_TYPES or (any(p.startswith("$") for p in parts[:2]) and not _is_op(parts)):
            return html_404()
        if len(parts) > 3 or (len(parts) == 3 and not parts[2].startswith("$")):
            return html_404()
        check = self.oauth.check_bearer(request.headers.get("authorization"), rtype)
        if check.failure is not None:
            return check.failure  # type: ignore[no-any-return]
        client_id: str = check.client_id
        return self._route(request, parts, client_id)

    def _route(self, request: Request, parts: list[str], client_id: str) -> Response:
        rtype, method = parts[0], request.method
        if len(parts) == 3:
            op = parts[2]
            if rtype == "Group" and op == "$export":
                return self.bulk.kickoff(request, client_id, parts[1])
            if rtype == "Patient" and op == "$summary" and method == "GET":
                if parts[1] not in self.dataset.resources.get("Patient", {}):
                    return fhir_response(request, outcome(_NOT_FOUND), 404)
                return fhir_response(request, patient_summary(self.dataset, parts[1], self.base_url()))
            return html_404()
        if len(parts) == 2 and parts[1] == "$match":
            if method != "POST":
                return self._not_supported(request, f"{method} is not supported for $match.")
            return match_patients(request, self.dataset, self.base_url())
        if len(parts) == 2 and parts[1] == "_search":
            if method != "POST":
                return html_404()
            return self._search(request, rtype, client_id, [*request.query, *request.form()])
        if len(parts) == 1:
            if method == "GET":
                session_id = request.param("sessionID")
                if session_id is not None:
                    return self._session(request, rtype, session_id)
                return self._search(request, rtype, client_id, request.query)
            if method == "POST":
                if rtype not in CREATE_TYPES:
                    return self._not_supported(request, f"Create is not supported for {rtype}.")
                return self.writer.create(request, rtype)
            return self._not_supported(request, f"{method} is not supported on this URL.")
        rid = parts[1]
        if method == "GET":
            if rtype == "Binary":
                return self.writer.read_binary(request, rid)
            resource = self.dataset.resources.get(rtype, {}).get(rid)
            if resource is None:
                return fhir_response(request, outcome(_NOT_FOUND), 404)
            return fhir_response(request, resource)
        if method == "PUT" and rtype in UPDATE_TYPES:
            return self.writer.update(request, rtype, rid)
        verb = {"PUT": "Update", "DELETE": "Delete", "PATCH": "Patch"}.get(method, method)
        return self._not_supported(request, f"{verb} is not supported for {rtype}.")

    def _not_supported(self, request: Request, diagnostics: str) -> Response:
        # Epic's status for unsupported interactions is unverified (docs/epic-notes.md §3.7); 405 is ours.
        issue = outcome_issue(
            "fatal",
            "not-supported",
            "4100",
            "The requested interaction is not supported.",
            diagnostics=diagnostics,
        )
        return fhir_response(request, outcome(issue), 405)

    def _search(
        self, request: Request, rtype: str, client_id: str, params: list[tuple[str, str]]
    ) -> Response:
        self.stats["searches"] += 1
        if rtype == "Binary":
            params = [(k, v) for k, v in params if k in ("_id", "_count")]
        result = run_search(
            rtype,
            params,
            self.dataset.resources,
            self.dataset.by_patient,
            allowed=self.oauth.allowed_types(client_id),
            warn_unknown=self.warn_unknown,
            outside_records=self.outside_records,
        )
        if isinstance(result, SearchFailure):
            return fhir_response(request, outcome(*result.issues), result.status)
        count_text = next((v for k, v in params if k == "_count"), None)
        page_size = self.page_size
        if count_text is not None and count_text.strip().isdigit() and int(count_text) > 0:
            page_size = min(int(count_text), self.max_page_size)
        summary_count = any(k == "_summary" and v == "count" for k, v in params)
        body = self.pager.first_page(
            rtype,
            result.ids,
            result.issues,
            self_query=self_link_query([(k, v) for k, v in params if k != "_format"]),
            page_size=page_size,
            summary_count=summary_count,
            includes=[v for k, v in params if k == "_include"],
            revincludes=[v for k, v in params if k == "_revinclude"],
        )
        return fhir_response(request, body)

    def _session(self, request: Request, rtype: str, session_id: str) -> Response:
        body = self.pager.session_page(rtype, session_id)
        if body is None:
            self.stats["sessions_expired"] += 1  # 4113 answers, counted for soak reports
            return fhir_response(request, outcome(_SESSION_EXPIRED), 400)
        return fhir_response(request, body)


def _is_op(parts: list[str]) -> bool:
    """Operations Epic has: Patient/$match, Patient/<id>/$summary, Group/<id>/$export."""
    if len(parts) == 2:
        return parts[0] == "Patient" and parts[1] == "$match"
    return len(parts) == 3 and (parts[0], parts[2]) in {("Patient", "$summary"), ("Group", "$export")}
