"""The sandbox's Bulk Data ``$export`` server, as Epic runs it (docs/epic-notes.md §4).

Group-level kick-off only (the app answers system- and Patient-level ``$export`` with the IIS 404 itself);
``Prefer: respond-async`` and ``Accept: application/fhir+json`` required; ``_type`` honoured, ``_since``
refused; one export per client and Group at a time plus a cool-down window; status polls that answer 202 for
``export_seconds`` of sandbox time, then a manifest; opaque file URLs that only the job's client may read; DELETE
to cancel or clean up; results that expire. What an export contains is planned in :mod:`._bulk_plan`; the
NDJSON bytes are streamed by :mod:`._bulk_files`.

Choices where Epic's behaviour is not recorded (each documented in ``docs/sandbox.md``):

* the "requested this Group too recently" rejection is a **429** (configurable) with ``Retry-After`` when the
  cool-down end is known: it is the status the Bulk Data spec gives for throttled kick-offs, and it makes
  clients prove they do not blindly retry it;
* another client's job answers **403**; an expired job's status **404** and its files **410 Gone**; a deleted
  job's status and files **404**;
* POST kick-off answers **405** unless ``allow_post`` (then a ``Parameters`` body is read).
"""

from __future__ import annotations

import math
import random
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from .. import _json
from .._config import FHIR_JSON
from ._bulk_files import SyntheticObservations, stream_file
from ._bulk_plan import (
    NDJSON,
    BulkFile,
    DatasetLike,
    FilterError,
    epic_issue,
    group_members,
    parse_kickoff_params,
    plan_export,
)
from ._clock import SandboxClock
from ._http import JSON_UTF8, Request, Response, html_404, outcome_response

__all__ = ["TOO_RECENT_TEXT", "BulkExports"]

#: Epic's diagnostics for a second kick-off within the window (observed, docs/epic-notes.md §4.2).
TOO_RECENT_TEXT = (
    "Error processing Bulk Data Kickoff request: Request not allowed: "
    "The Client requested this Group too recently."
)
_KICKOFF_ERROR = "Error processing Bulk Data Kickoff request: "
_ID_ALPHABET = string.ascii_letters + string.digits


def _fail(
    status: int,
    code: str,
    epic: str,
    diagnostics: str,
    headers: Sequence[tuple[str, str]] = (),
    **extra: Any,
) -> Response:
    response = outcome_response(status, epic_issue("fatal", code, epic, diagnostics, **extra))
    response.headers.extend(headers)
    return response


@dataclass
class _Job:
    job_id: str
    client_id: str
    group_id: str
    started: float
    request_url: str
    members: list[str]
    outputs: list[BulkFile]
    errors: list[BulkFile]
    files: dict[str, BulkFile] = field(default_factory=dict)


class BulkExports:
    """Epic-style Bulk Data jobs for the sandbox app (all times on the sandbox clock, in seconds).

    ``export_seconds``: how long status polls answer 202. ``cooldown_seconds``: Epic's per client+Group
    kick-off window (``FHIR_BULK_CLIENT_REQUEST_WINDOW_TBL``, 24 h at Epic; 0 here by default so tests
    re-export freely). ``resources_per_file``: split point of a type's output. ``retention_seconds``: results
    deleted this long after completion (~14 days at Epic, unverified: docs/epic-notes.md §4.5). ``since``:
    ``"reject"`` (Epic) or ``"ignore"``. ``type_filter``: accept ``_typeFilter`` (Epic does today; it did not
    in 2023). ``synthetic_observations``: extra generated Observations appended to the Observation output for
    benchmarks, in files of ``synthetic_per_file`` (default ``resources_per_file``). ``allowed_types``: the
    OAuth server's ``allowed_types`` so types a client may not read are left out with a 59204 warning in the
    error file.
    """

    def __init__(
        self,
        *,
        dataset: DatasetLike,
        base_url: str,
        clock: SandboxClock,
        stats: Counter[str],
        export_seconds: float = 2.0,
        cooldown_seconds: float = 0.0,
        seed: int = 0,
        resources_per_file: int = 1000,
        retention_seconds: float = 14 * 86400.0,
        since: Literal["reject", "ignore"] = "reject",
        type_filter: bool = True,
        allow_post: bool = False,
        too_recent_status: int = 429,
        progress_headers: bool = True,
        max_retry_after: float = 600.0,
        synthetic_observations: int = 0,
        synthetic_per_file: int | None = None,
        allowed_types: Callable[[str], frozenset[str] | None] | None = None,
    ) -> None:
        if resources_per_file < 1:
            raise ValueError("resources_per_file must be at least 1")
        self.dataset = dataset
        self.base_url = base_url.rstrip("/")  # public: the app updates it when served on another port
        self.clock = clock
        self.stats = stats
        self.export_seconds = export_seconds
        self.cooldown_seconds = cooldown_seconds
        self.resources_per_file = resources_per_file
        self.retention_seconds = retention_seconds
        self.since = since
        self.type_filter = type_filter
        self.allow_post = allow_post
        self.too_recent_status = too_recent_status
        self.progress_headers = progress_headers
        self.max_retry_after = max_retry_after
        self.synthetic_observations = synthetic_observations
        self.synthetic_per_file = synthetic_per_file or resources_per_file
        self.allowed_types = allowed_types
        self._seed = seed
        self._rng = random.Random(seed)  # noqa: S311  (opaque ids, not secrets: the bearer check guards files)
        self._jobs: dict[str, _Job] = {}
        self._expired: dict[str, str] = {}  # job id -> client id, so late file requests get 410, not 404
        self._active: dict[tuple[str, str], str] = {}  # (client, group) -> job id holding Epic's one slot
        self._last_kickoff: dict[tuple[str, str], float] = {}
        self._synthetic: dict[str, SyntheticObservations] = {}  # per Group: subjects are its members

    # ------------------------------------------------------------------ kick-off

    def kickoff(self, request: Request, client_id: str, group_id: str) -> Response:
        """``GET <base>/Group/{id}/$export`` → 202 + ``Content-Location``, or Epic's 4xx OperationOutcome."""
        response = self._kickoff(request, client_id, group_id)
        self.stats["bulk_kickoffs" if response.status == 202 else "bulk_kickoff_errors"] += 1
        return response

    def _kickoff(self, request: Request, client_id: str, group_id: str) -> Response:
        if request.method == "POST" and self.allow_post:
            try:
                params = _parameters_body(request.body)
            except ValueError:
                return _fail(
                    400, "invalid", "4100", _KICKOFF_ERROR + "The body must be a Parameters resource."
                )
        elif request.method == "GET":
            params = list(request.query)
        else:  # Epic documents GET kick-off only (docs/epic-notes.md §4.1)
            resp = _fail(405, "not-supported", "4100", _KICKOFF_ERROR + f"{request.method} is not supported.")
            resp.headers.append(("allow", "GET, POST" if self.allow_post else "GET"))
            return resp
        if "respond-async" not in request.headers.get("prefer", "").lower():
            return _fail(400, "required", "4100", _KICKOFF_ERROR + "The Prefer header must be respond-async.")
        accepted = [
            part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(",")
        ]
        if FHIR_JSON not in accepted:
            return _fail(400, "required", "4100", _KICKOFF_ERROR + f"The Accept header must be {FHIR_JSON}.")
        members = group_members(self.dataset, group_id)
        if members is None:
            return _fail(404, "not-found", "59008", "Invalid FHIR ID provided", location=["/f:id"])
        try:
            types, filters = parse_kickoff_params(
                params, self.dataset, since=self.since, type_filter=self.type_filter
            )
        except FilterError as exc:
            return _fail(
                400,
                "not-supported" if "support" in str(exc) else "invalid",
                "4100",
                _KICKOFF_ERROR + str(exc),
            )
        if (rejected := self._throttle(client_id, group_id)) is not None:
            self.stats["bulk_rejections"] += 1
            return rejected
        now = self.clock.now()
        outputs, errors = plan_export(
            self.dataset,
            members,
            types,
            filters,
            allowed=self.allowed_types(client_id) if self.allowed_types is not None else None,
            resources_per_file=self.resources_per_file,
            synthetic_observations=self.synthetic_observations,
            synthetic_per_file=self.synthetic_per_file,
            new_id=self._opaque_id,
        )
        request_url = f"{self.base_url}/Group/{group_id}/$export"
        if request.method == "GET" and request.raw_query:
            request_url += f"?{request.raw_query}"
        job = _Job(self._opaque_id(), client_id, group_id, now, request_url, members, outputs, errors)
        job.files = {f.file_id: f for f in (*outputs, *errors)}
        self._jobs[job.job_id] = job
        self._active[(client_id, group_id)] = job.job_id
        self._last_kickoff[(client_id, group_id)] = now
        return Response(202, [("content-location", self._status_url(job.job_id))])

    def _throttle(self, client_id: str, group_id: str) -> Response | None:
        """Epic's one export per client+Group, and its cool-down window since the previous kick-off.

        Epic's re-export window: docs/epic-notes.md §4.2.
        """
        key = (client_id, group_id)
        active = self._active.get(key)
        if active is not None and self._live(active) is not None:
            return _fail(self.too_recent_status, "throttled", "59159", TOO_RECENT_TEXT)
        last = self._last_kickoff.get(key)
        if last is not None and (wait := last + self.cooldown_seconds - self.clock.now()) > 0:
            headers = [("retry-after", str(max(1, math.ceil(wait))))]
            return _fail(self.too_recent_status, "throttled", "59159", TOO_RECENT_TEXT, headers)
        return None

    def _opaque_id(self) -> str:
        """An Epic-looking opaque id such as ``eNZwsy9bU7LX8nBB.RJXkpA3`` (docs/epic-notes.md §4.4)."""
        head = "".join(self._rng.choices(_ID_ALPHABET, k=15))
        return f"e{head}.{''.join(self._rng.choices(_ID_ALPHABET, k=7))}"

    # ------------------------------------------------------------------ status, files, delete

    def handle(self, request: Request, client_id: str, subpath: str) -> Response:
        """``BulkRequest/<job>`` (GET status, DELETE) and ``BulkRequest/<job>/<file>`` (GET file)."""
        parts = subpath.strip("/").split("/")
        if len(parts) not in (2, 3) or parts[0] != "BulkRequest" or not all(parts):
            return html_404()
        job_id, file_id = parts[1], (parts[2] if len(parts) == 3 else None)
        allowed = ("GET",) if file_id else ("GET", "DELETE")
        if request.method not in allowed:
            resp = _fail(405, "not-supported", "4100", f"{request.method} is not supported on this URL.")
            resp.headers.append(("allow", ", ".join(allowed)))
            return resp
        job = self._live(job_id)
        owner = job.client_id if job is not None else self._expired.get(job_id)
        if owner is not None and owner != client_id:
            return _fail(403, "forbidden", "4118", "The Bulk Data request belongs to another client.")
        if job is None:
            if file_id and job_id in self._expired:
                return _fail(410, "not-found", "59008", "The Bulk Data files have expired and were deleted.")
            return _fail(404, "not-found", "59008", "The Bulk Data request was not found or has expired.")
        if file_id is not None:
            return self._file(job, file_id)
        if request.method == "DELETE":
            del self._jobs[job_id]
            if self._active.get((job.client_id, job.group_id)) == job_id:
                del self._active[(job.client_id, job.group_id)]
            self.stats["bulk_deletes"] += 1
            return Response(202)
        return self._status(job)

    def _status(self, job: _Job) -> Response:
        self.stats["bulk_status_polls"] += 1
        elapsed = self.clock.now() - job.started
        if elapsed < self.export_seconds:
            # Epic: 202 with an empty body while running; the headers are the Bulk spec's (unverified at Epic,
            # docs/epic-notes.md §4.3).
            headers: list[tuple[str, str]] = []
            if self.progress_headers:
                percent = int(100 * elapsed / self.export_seconds)
                wait = min(self.max_retry_after, self.export_seconds - elapsed)
                headers = [
                    ("x-progress", f"Processing: {percent}%"),
                    ("retry-after", str(max(1, math.ceil(wait)))),
                ]
            return Response(202, headers)
        manifest = {
            "transactionTime": _instant(job.started),
            "request": job.request_url,
            "requiresAccessToken": True,
            "output": [self._entry(job, f) for f in job.outputs],
            "error": [self._entry(job, f) for f in job.errors],
        }
        return Response(200, [("content-type", JSON_UTF8)], _json.dumps(manifest))

    def _entry(self, job: _Job, file: BulkFile) -> dict[str, Any]:
        return {
            "type": file.resource_type,
            "url": f"{self._status_url(job.job_id)}/{file.file_id}",
            "count": file.count,
        }

    def _file(self, job: _Job, file_id: str) -> Response:
        file = job.files.get(file_id)
        if file is None or self.clock.now() - job.started < self.export_seconds:
            return _fail(404, "not-found", "59008", "The Bulk Data file was not found.")
        self.stats["bulk_files_served"] += 1
        synthetic = None
        if file.synthetic:
            synthetic = self._synthetic.get(job.group_id)
            if synthetic is None:
                synthetic = SyntheticObservations(job.members, seed=self._seed)
                self._synthetic[job.group_id] = synthetic
        table = self.dataset.resources.get(file.resource_type, {})

        def count_bytes(n: int) -> None:
            self.stats["bulk_bytes_served"] += n

        return Response(
            200, [("content-type", NDJSON)], stream=stream_file(file, table, synthetic, count_bytes)
        )

    def _live(self, job_id: str) -> _Job | None:
        """The job, or None once deleted or past retention (an expired job frees its slot and is remembered)."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if self.clock.now() >= job.started + self.export_seconds + self.retention_seconds:
            del self._jobs[job_id]
            self._expired[job_id] = job.client_id
            if self._active.get((job.client_id, job.group_id)) == job_id:
                del self._active[(job.client_id, job.group_id)]
            return None
        return job

    def _status_url(self, job_id: str) -> str:
        return f"{self.base_url}/BulkRequest/{job_id}"


def _instant(epoch: float) -> str:
    """A FHIR ``instant`` in UTC with milliseconds."""
    stamp = datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _parameters_body(body: bytes) -> list[tuple[str, str]]:
    """``(name, value)`` pairs of a FHIR ``Parameters`` kick-off body (Bulk Data 2.0 POST form)."""
    try:
        data = _json.loads(body)
    except _json.JSONDecodeError as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(data, dict) or data.get("resourceType") != "Parameters":
        raise ValueError("not Parameters")
    pairs = []
    for param in data.get("parameter", []):
        value = next((v for k, v in param.items() if k.startswith("value")), None)
        if isinstance(param.get("name"), str) and isinstance(value, str):
            pairs.append((param["name"], value))
    return pairs
