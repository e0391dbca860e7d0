"""BulkExports driven directly with Request objects: kick-off rules, polling, manifest, files, throttle, expiry."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest

from epic_fhir_async import _json
from epic_fhir_async.sandbox._bulk import TOO_RECENT_TEXT, BulkExports
from epic_fhir_async.sandbox._bulk_plan import DatasetLike
from epic_fhir_async.sandbox._clock import SandboxClock
from epic_fhir_async.sandbox._http import Request, Response

pytestmark = pytest.mark.anyio

ORIGIN = "http://127.0.0.1:8765"
BASE = f"{ORIGIN}/interconnect-fhir-oauth/api/FHIR/R4"
GROUP = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"
SMALL_GROUP = "eSmallGroup0001"
MEMBERS = {"pat-a", "pat-b", "pat-c"}
EPIC_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"
OPAQUE = re.compile(r"^e[A-Za-z0-9]{15}\.[A-Za-z0-9]{7}$")

BulkFactory = Callable[..., BulkExports]


def kickoff(
    bulk: BulkExports,
    query: str = "",
    *,
    client: str = "client-1",
    group: str = GROUP,
    prefer: str | None = "respond-async",
    accept: str | None = "application/fhir+json",
    method: str = "GET",
    body: bytes = b"",
) -> Response:
    headers = {k: v for k, v in (("prefer", prefer), ("accept", accept)) if v is not None}
    request = Request(
        method=method,
        path=f"/interconnect-fhir-oauth/api/FHIR/R4/Group/{group}/$export",
        query=parse_qsl(query, keep_blank_values=True),
        headers=headers,
        body=body,
        raw_query=query,
    )
    return bulk.kickoff(request, client, group)


def call(bulk: BulkExports, url: str, *, client: str = "client-1", method: str = "GET") -> Response:
    assert url.startswith(BASE + "/")
    request = Request(method=method, path=url[len(ORIGIN) :], headers={"accept": "application/fhir+json"})
    return bulk.handle(request, client, url[len(BASE) + 1 :])


async def read(response: Response) -> bytes:
    if response.stream is None:
        return response.body
    return b"".join([chunk async for chunk in response.stream])


def issues(response: Response) -> list[dict[str, Any]]:
    assert response.header("content-type") is not None
    data = _json.loads(response.body)
    assert data["resourceType"] == "OperationOutcome"
    return list(data["issue"])


def diagnostics(response: Response) -> str:
    return " | ".join(str(issue.get("diagnostics", "")) for issue in issues(response))


def finish(bulk: BulkExports, clock: SandboxClock, status_url: str) -> dict[str, Any]:
    clock.advance(bulk.export_seconds)
    response = call(bulk, status_url)
    assert response.status == 200
    assert response.header("content-type") == "application/json; charset=utf-8"
    manifest: dict[str, Any] = _json.loads(response.body)
    return manifest


async def download(bulk: BulkExports, url: str, client: str = "client-1") -> list[dict[str, Any]]:
    response = call(bulk, url, client=client)
    assert response.status == 200, response.body
    assert response.header("content-type") == "application/fhir+ndjson"
    data = await read(response)
    assert data.endswith(b"\n")
    assert b"\n\n" not in data  # one resource per line
    assert b'", "' not in data  # compact JSON
    return [_json.loads(line) for line in data.splitlines()]


def patient_of(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    holder = resource.get("subject") or resource.get("patient") or {}
    return str(holder.get("reference", "")).removeprefix("Patient/")


async def test_full_flow_polls_then_manifest_then_files(
    make_bulk: BulkFactory, clock: SandboxClock, stats: Counter[str]
) -> None:
    bulk = make_bulk(export_seconds=10.0)
    started = clock.now()
    response = kickoff(bulk, "_type=Patient,Observation")
    assert response.status == 202
    assert response.body == b""
    status_url = response.header("content-location")
    assert status_url is not None
    assert status_url.startswith(f"{BASE}/BulkRequest/")
    assert OPAQUE.match(status_url.rsplit("/", 1)[1])

    poll = call(bulk, status_url)
    assert (poll.status, poll.body) == (202, b"")
    assert poll.header("x-progress") == "Processing: 0%"
    assert poll.header("retry-after") == "10"
    clock.advance(4.0)
    poll = call(bulk, status_url)
    assert poll.status == 202
    assert poll.header("x-progress") == "Processing: 40%"
    assert poll.header("retry-after") == "6"

    manifest = finish(bulk, clock, status_url)
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"] == f"{BASE}/Group/{GROUP}/$export?_type=Patient,Observation"
    when = datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00"))
    assert when.timestamp() == pytest.approx(started)
    assert manifest["transactionTime"].endswith("Z")
    assert "deleted" not in manifest
    assert [entry["type"] for entry in manifest["output"]] == ["Patient", "Observation"]
    seen: dict[str, set[str]] = {}
    for entry in manifest["output"]:
        assert entry["url"].startswith(f"{status_url}/")
        assert OPAQUE.match(entry["url"].rsplit("/", 1)[1])  # no extension, Epic-style opaque id
        resources = await download(bulk, entry["url"])
        assert len(resources) == entry["count"]
        for resource in resources:
            assert resource["resourceType"] == entry["type"]
            assert patient_of(resource) in MEMBERS
            seen.setdefault(entry["type"], set()).add(resource["id"])
    assert seen["Patient"] == MEMBERS
    assert len(seen["Observation"]) == 10  # pat-a 5 vitals + 2 labs, pat-b 3; the outsider's 8 left out
    assert stats["bulk_kickoffs"] == 1
    assert stats["bulk_status_polls"] == 3
    assert stats["bulk_files_served"] == 2
    assert stats["bulk_bytes_served"] > 0


async def test_default_types_are_every_compartment_type_the_dataset_has(
    make_bulk: BulkFactory, clock: SandboxClock
) -> None:
    bulk = make_bulk()
    manifest = finish(bulk, clock, kickoff(bulk).header("content-location") or "")
    assert [e["type"] for e in manifest["output"]] == ["Patient", "Condition", "Observation"]
    assert [e["count"] for e in manifest["output"]] == [3, 1, 10]
    assert manifest["request"] == f"{BASE}/Group/{GROUP}/$export"


async def test_type_parameter_limits_types_and_may_repeat(
    make_bulk: BulkFactory, clock: SandboxClock
) -> None:
    bulk = make_bulk()
    response = kickoff(bulk, "_type=Condition&_type=Patient,Condition")
    manifest = finish(bulk, clock, response.header("content-location") or "")
    assert [e["type"] for e in manifest["output"]] == ["Condition", "Patient"]
    (condition,) = await download(bulk, manifest["output"][0]["url"])
    assert condition["id"] == "cond-pat-a"


@pytest.mark.parametrize("query", ["_type=Foo", "_type=Patient,NotAType", "_typeFilter=Nope?status=final"])
async def test_unknown_type_is_a_400(make_bulk: BulkFactory, query: str) -> None:
    response = kickoff(make_bulk(), query)
    assert response.status == 400
    (issue,) = issues(response)
    assert issue["severity"] == "fatal"
    assert issue["details"]["coding"][0]["system"] == EPIC_SYSTEM
    assert "not valid for a Group export" in issue["diagnostics"]


async def test_requested_type_without_data_gets_a_4101_note(
    make_bulk: BulkFactory, clock: SandboxClock
) -> None:
    bulk = make_bulk()
    manifest = finish(
        bulk, clock, kickoff(bulk, "_type=Patient,Immunization").header("content-location") or ""
    )
    assert [e["type"] for e in manifest["output"]] == ["Patient"]
    (error,) = manifest["error"]
    assert error["type"] == "OperationOutcome"
    lines = await download(bulk, error["url"])
    assert len(lines) == error["count"] == 1
    (issue,) = lines[0]["issue"]
    assert issue["details"]["coding"][0]["code"] == "4101"
    assert issue["severity"] == "warning"
    assert "Immunization" in issue["diagnostics"]


async def test_error_file_always_present(make_bulk: BulkFactory, clock: SandboxClock) -> None:
    bulk = make_bulk()
    manifest = finish(bulk, clock, kickoff(bulk, "_type=Patient").header("content-location") or "")
    (error,) = manifest["error"]
    (line,) = await download(bulk, error["url"])
    assert line["resourceType"] == "OperationOutcome"
    assert line["issue"][0]["severity"] == "information"
    assert "Exported 3 resources for 3 patients" in line["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("prefer", "accept", "needle"),
    [
        (None, "application/fhir+json", "Prefer header must be respond-async"),
        ("respond-sync", "application/fhir+json", "Prefer header must be respond-async"),
        ("respond-async", None, "Accept header must be application/fhir+json"),
        ("respond-async", "*/*", "Accept header must be application/fhir+json"),
        ("respond-async", "application/json", "Accept header must be application/fhir+json"),
    ],
)
async def test_kickoff_headers_are_required(
    make_bulk: BulkFactory, stats: Counter[str], prefer: str | None, accept: str | None, needle: str
) -> None:
    response = kickoff(make_bulk(), prefer=prefer, accept=accept)
    assert response.status == 400
    assert needle in diagnostics(response)
    assert stats["bulk_kickoffs"] == 0
    assert stats["bulk_kickoff_errors"] == 1


async def test_kickoff_accepts_parameters_in_headers(make_bulk: BulkFactory) -> None:
    response = kickoff(
        make_bulk(), prefer="respond-async, handling=lenient", accept="application/fhir+json; q=1"
    )
    assert response.status == 202


async def test_unknown_group_is_a_59008_404(make_bulk: BulkFactory) -> None:
    response = kickoff(make_bulk(), group="eNoSuchGroup")
    assert response.status == 404
    (issue,) = issues(response)
    assert issue["details"]["coding"][0]["code"] == "59008"
    assert issue["code"] == "not-found"


async def test_group_resource_members_decide_the_patients(
    make_bulk: BulkFactory, clock: SandboxClock
) -> None:
    bulk = make_bulk()
    manifest = finish(bulk, clock, kickoff(bulk, group=SMALL_GROUP).header("content-location") or "")
    ids = {patient_of(r) for e in manifest["output"] for r in await download(bulk, e["url"])}
    assert ids == {"pat-b"}


async def test_since_rejected_by_default_and_ignorable(make_bulk: BulkFactory) -> None:
    response = kickoff(make_bulk(), "_since=2024-01-01T00:00:00Z")
    assert response.status == 400
    (issue,) = issues(response)
    assert issue["code"] == "not-supported"
    assert "We do not support the _since parameter" in issue["diagnostics"]
    assert kickoff(make_bulk(since="ignore"), "_since=2024-01-01T00:00:00Z").status == 202


async def test_type_filter_selects_sub_types(make_bulk: BulkFactory, clock: SandboxClock) -> None:
    bulk = make_bulk()
    response = kickoff(bulk, "_type=Observation&_typeFilter=Observation%3Fcategory%3Dlaboratory")
    manifest = finish(bulk, clock, response.header("content-location") or "")
    (entry,) = manifest["output"]
    labs = await download(bulk, entry["url"])
    assert {r["id"] for r in labs} == {"obs-pat-a-5", "obs-pat-a-6"}


async def test_type_filter_flag_and_unsupported_parameters(make_bulk: BulkFactory) -> None:
    off = kickoff(make_bulk(type_filter=False), "_typeFilter=Observation%3Fcategory%3Dlaboratory")
    assert off.status == 400
    assert "_typeFilter parameter is not supported" in diagnostics(off)
    bad = kickoff(make_bulk(), "_typeFilter=Observation%3Fdate%3Dgt2020")
    assert bad.status == 400
    assert "'date' is not supported" in diagnostics(bad)
    fmt = kickoff(make_bulk(), "_outputFormat=text/csv")
    assert fmt.status == 400


async def test_post_kickoff_is_405_unless_allowed(make_bulk: BulkFactory, clock: SandboxClock) -> None:
    body = _json.dumps(
        {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Condition"}]}
    )
    refused = kickoff(make_bulk(), method="POST", body=body)
    assert refused.status == 405
    assert refused.header("allow") == "GET"
    bulk = make_bulk(allow_post=True)
    assert kickoff(bulk, method="POST", body=b"not json").status == 400
    response = kickoff(bulk, method="POST", body=body)
    assert response.status == 202
    manifest = finish(bulk, clock, response.header("content-location") or "")
    assert [e["type"] for e in manifest["output"]] == ["Condition"]


async def test_second_kickoff_while_active_is_rejected_until_delete(
    make_bulk: BulkFactory, stats: Counter[str]
) -> None:
    bulk = make_bulk()
    status_url = kickoff(bulk).header("content-location") or ""
    rejected = kickoff(bulk, "_type=Patient")
    assert rejected.status == 429
    assert TOO_RECENT_TEXT in diagnostics(rejected)
    assert rejected.header("retry-after") is None  # the slot frees on DELETE, not at a known time
    assert stats["bulk_rejections"] == 1
    assert kickoff(bulk, client="client-2").status == 202  # per client ...
    assert kickoff(bulk, group=SMALL_GROUP).status == 202  # ... and per Group
    assert call(bulk, status_url, method="DELETE").status == 202
    assert kickoff(bulk).status == 202


async def test_cooldown_window_survives_delete_and_sets_retry_after(
    make_bulk: BulkFactory, clock: SandboxClock
) -> None:
    bulk = make_bulk(cooldown_seconds=3600.0, too_recent_status=400)
    status_url = kickoff(bulk).header("content-location") or ""
    assert call(bulk, status_url, method="DELETE").status == 202
    clock.advance(600.5)
    rejected = kickoff(bulk)
    assert rejected.status == 400
    (issue,) = issues(rejected)
    assert issue["diagnostics"] == TOO_RECENT_TEXT
    assert issue["code"] == "throttled"
    assert rejected.header("retry-after") == "3000"
    clock.advance(3000)
    assert kickoff(bulk).status == 202


async def test_delete_finished_job_removes_status_and_files(
    make_bulk: BulkFactory, clock: SandboxClock, stats: Counter[str]
) -> None:
    bulk = make_bulk()
    status_url = kickoff(bulk).header("content-location") or ""
    manifest = finish(bulk, clock, status_url)
    deleted = call(bulk, status_url, method="DELETE")
    assert (deleted.status, deleted.body) == (202, b"")
    assert stats["bulk_deletes"] == 1
    assert call(bulk, status_url).status == 404
    for entry in manifest["output"] + manifest["error"]:
        gone = call(bulk, entry["url"])
        assert gone.status == 404
        assert issues(gone)[0]["code"] == "not-found"
    assert call(bulk, status_url, method="DELETE").status == 404


async def test_delete_cancels_a_running_job(make_bulk: BulkFactory, clock: SandboxClock) -> None:
    bulk = make_bulk(export_seconds=100.0)
    status_url = kickoff(bulk).header("content-location") or ""
    assert call(bulk, status_url).status == 202
    assert call(bulk, status_url, method="DELETE").status == 202
    clock.advance(100.0)
    assert call(bulk, status_url).status == 404


async def test_large_types_split_into_several_files(make_bulk: BulkFactory, clock: SandboxClock) -> None:
    bulk = make_bulk(resources_per_file=3)
    manifest = finish(
        bulk, clock, kickoff(bulk, "_type=Patient,Observation").header("content-location") or ""
    )
    counts = [(e["type"], e["count"]) for e in manifest["output"]]
    assert counts == [
        ("Patient", 3),
        ("Observation", 3),
        ("Observation", 3),
        ("Observation", 3),
        ("Observation", 1),
    ]
    assert len({e["url"] for e in manifest["output"]}) == len(counts)
    ids: list[str] = []
    for entry in manifest["output"][1:]:
        lines = await download(bulk, entry["url"])
        assert len(lines) == entry["count"]
        ids += [r["id"] for r in lines]
    assert len(ids) == len(set(ids)) == 10


async def test_other_clients_cannot_see_a_job(make_bulk: BulkFactory, clock: SandboxClock) -> None:
    bulk = make_bulk()
    status_url = kickoff(bulk).header("content-location") or ""
    manifest = finish(bulk, clock, status_url)
    file_url = manifest["output"][0]["url"]
    for url, method in ((status_url, "GET"), (file_url, "GET"), (status_url, "DELETE")):
        refused = call(bulk, url, client="intruder", method=method)
        assert refused.status == 403
        assert issues(refused)[0]["code"] == "forbidden"
    assert call(bulk, file_url).status == 200  # the owner still can


async def test_files_are_not_served_before_completion(make_bulk: BulkFactory, clock: SandboxClock) -> None:
    done = make_bulk(export_seconds=10.0, seed=7)
    manifest = finish(done, clock, kickoff(done).header("content-location") or "")
    # Same seed, same request: the opaque ids repeat, so we know the URLs of a job that is still running.
    running = make_bulk(export_seconds=10.0, seed=7)
    assert kickoff(running).header("content-location") == manifest["output"][0]["url"].rsplit("/", 1)[0]
    early = call(running, manifest["output"][0]["url"])
    assert early.status == 404
    clock.advance(10.0)
    assert call(running, manifest["output"][0]["url"]).status == 200


async def test_retention_expiry(make_bulk: BulkFactory, clock: SandboxClock) -> None:
    bulk = make_bulk(export_seconds=5.0, retention_seconds=60.0)
    status_url = kickoff(bulk).header("content-location") or ""
    manifest = finish(bulk, clock, status_url)
    clock.advance(59.0)
    assert call(bulk, status_url).status == 200
    clock.advance(1.0)
    expired = call(bulk, status_url)
    assert expired.status == 404
    assert "expired" in diagnostics(expired)
    late = call(bulk, manifest["output"][0]["url"])
    assert late.status == 410
    assert call(bulk, manifest["output"][0]["url"], client="other").status == 403
    assert kickoff(bulk).status == 202  # the slot is free again


async def test_client_type_grants_leave_types_out_with_59204(
    dataset: DatasetLike, clock: SandboxClock, stats: Counter[str]
) -> None:
    grants = {"client-1": frozenset({"Patient", "Observation?category=laboratory"})}
    bulk = BulkExports(dataset=dataset, base_url=BASE, clock=clock, stats=stats, allowed_types=grants.get)
    manifest = finish(bulk, clock, kickoff(bulk).header("content-location") or "")
    assert [(e["type"], e["count"]) for e in manifest["output"]] == [("Patient", 3), ("Observation", 2)]
    lines = await download(bulk, manifest["error"][0]["url"])
    codes = [
        (line["issue"][0]["details"]["coding"][0]["code"], line["issue"][0]["diagnostics"]) for line in lines
    ]
    assert codes == [
        ("59204", "Client not authorized for Condition. Resources of this type have not been included."),
        (
            "59204",
            "Client not authorized for some Observation sub-types. Resources of this type have not been included.",
        ),
    ]


async def test_unknown_paths_and_methods(make_bulk: BulkFactory, clock: SandboxClock) -> None:
    bulk = make_bulk()
    status_url = kickoff(bulk).header("content-location") or ""
    manifest = finish(bulk, clock, status_url)
    request = Request(method="GET", path="/x")
    assert bulk.handle(request, "client-1", "BulkRequest").status == 404
    html = bulk.handle(request, "client-1", "BulkRequest/a/b/c")
    assert html.header("content-type") == "text/html; charset=iso-8859-1"
    assert call(bulk, f"{BASE}/BulkRequest/eNope").status == 404
    assert call(bulk, f"{status_url}/eNoSuchFile").status == 404
    wrong = call(bulk, manifest["output"][0]["url"], method="DELETE")
    assert wrong.status == 405
    assert wrong.header("allow") == "GET"
    assert call(bulk, status_url, method="POST").status == 405


async def test_real_dataset_export_matches_its_indexes(clock: SandboxClock, stats: Counter[str]) -> None:
    from epic_fhir_async.sandbox._data import build_dataset

    dataset = build_dataset(seed=0, patients=20)
    bulk = BulkExports(dataset=dataset, base_url=BASE, clock=clock, stats=stats, resources_per_file=250)
    manifest = finish(bulk, clock, kickoff(bulk).header("content-location") or "")
    group = dataset.resources["Group"][dataset.group_id]
    members = {m["entity"]["reference"].removeprefix("Patient/") for m in group["member"]}
    expected = {"Patient": len(members)}
    for rtype, index in dataset.by_patient.items():
        expected[rtype] = len({rid for pid in members for rid in index.get(pid, [])})
    got: Counter[str] = Counter()
    for entry in manifest["output"]:
        resources = await download(bulk, entry["url"])
        assert len(resources) == entry["count"] <= 250
        assert {r["resourceType"] for r in resources} == {entry["type"]}
        assert {patient_of(r) for r in resources} <= members
        got[entry["type"]] += len(resources)
    assert dict(got) == {k: v for k, v in expected.items() if v}
