"""``epic-fhir demo``: the whole main job against the embedded Epic sandbox, in a few seconds, offline.

Starts the sandbox on 127.0.0.1 (a free port), makes a throwaway RS384 key and registers its public JWKS,
authenticates with SMART Backend Services (a real signed-JWT token request), pulls every sandbox patient's
data concurrently into ``./epic-fhir-demo/`` with the live progress display, runs a small Bulk
``$export``, and prints what happened and what to try next.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
from rich.markup import escape
from rich.panel import Panel

from .. import EpicFHIRClient
from ..auth import BackendServicesAuth, generate_private_key, public_jwks
from ..bulk import EPIC_SANDBOX_BULK_GROUP_ID
from ..sandbox import EpicSandbox, SandboxConfig
from ._common import describe, make_console, positive_int
from ._pull import print_summary, pull_to_directory
from ._pull_display import report_failures
from ._pull_sink import STATE_DIR

CLIENT_ID = "epic-fhir-demo"
DEMO_TYPES = (
    "Patient",
    "AllergyIntolerance",
    "Condition",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Immunization",
    "MedicationRequest",
    "Observation",  # Epic needs a category: expands to vital-signs, laboratory, social-history searches
    "Procedure",
)
_BULK_TIMEOUT = 60.0  # seconds for the whole bulk step (the sandbox job itself takes half a second)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the main job end to end against the embedded Epic sandbox (no credentials needed)",
        description=(
            "Start the embedded Epic sandbox on 127.0.0.1, authenticate with SMART Backend Services using "
            "a throwaway key, pull every patient concurrently into NDJSON files, and summarise."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("epic-fhir-demo"), help="output directory")
    parser.add_argument(
        "--patients",
        type=positive_int,
        default=100,
        metavar="N",
        help="generated sandbox patients (default 100)",
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=16, metavar="N", help="searches in flight (default 16)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sandbox data seed (default 0)")
    parser.set_defaults(func=run)


async def _bulk_export(client: EpicFHIRClient, out: Path) -> tuple[Mapping[str, int] | None, str | None]:
    """A small Group ``$export`` (Patient and Condition) downloaded into ``out/bulk``.

    Returns the resources on disk per type, or ``None`` and a one-line reason: the demo still prints what the
    pull got, then exits 1, so a broken bulk step cannot pass for a working one.
    """
    try:
        with anyio.fail_after(_BULK_TIMEOUT):
            job = await client.bulk_export(EPIC_SANDBOX_BULK_GROUP_ID, types=["Patient", "Condition"])
            await job.wait(poll_interval=0.25, max_interval=1.0)
            result = await job.download(out / "bulk")
            await job.delete()
    except TimeoutError:
        return None, f"the export did not finish within {_BULK_TIMEOUT:.0f} s"
    except Exception as exc:  # any failure is reported (one line) and turns the exit status to 1
        return None, " ".join(describe(exc).split())
    return result.counts(), None


async def run(args: argparse.Namespace) -> int:
    console = make_console()
    started = time.perf_counter()
    out: Path = args.out
    if (out / STATE_DIR).exists():  # an interrupted earlier demo: start afresh, it is only demo data
        shutil.rmtree(out / STATE_DIR)
    console.print(
        "[bold]epic-fhir demo[/]: the main job against the embedded Epic sandbox (all local, offline)"
    )
    sandbox = EpicSandbox(SandboxConfig(seed=args.seed, patients=args.patients, export_seconds=0.5))
    key = generate_private_key("RS384")
    sandbox.register_client(CLIENT_ID, public_jwks(key))
    async with sandbox.serve(host="127.0.0.1", port=0) as base_url:
        console.print(f"  sandbox   {base_url}")
        console.print(f"  client    {CLIENT_ID} (throwaway RS384 key {key.kid[:12]}…, JWKS registered)")
        auth = BackendServicesAuth(CLIENT_ID, key)
        async with EpicFHIRClient(base_url, auth=auth) as client:
            token = await auth.get_token()
            console.print(
                f"  token     Backend Services JWT grant OK, expires in {token.lifetime or 0:.0f} s"
            )
            patients = list(sandbox.dataset.patient_ids)
            console.print(
                f"  pulling   {len(DEMO_TYPES)} resource types for {len(patients)} patients, "
                f"{args.concurrency} searches at a time"
            )
            if console.is_terminal:
                console.print()  # room for the live bar; piped, plain progress lines follow instead
            report = await pull_to_directory(
                client,
                patients,
                DEMO_TYPES,
                out,
                console=console,
                concurrency=args.concurrency,
                description="Pulling",
                plain_every=2.0,
            )
            bulk, bulk_error = await _bulk_export(client, out)
        stats = dict(sandbox.stats)
    elapsed = time.perf_counter() - started
    if console.is_terminal:
        console.print()
    print_summary(console, report, out, title=f"Pulled into {out}/")
    report_failures(report.failures, resumable=False)
    if bulk is not None:
        detail = ", ".join(f"{n:,} {t}" for t, n in sorted(bulk.items()))
        console.print(f"Bulk $export of the sandbox Group into {out}/bulk/: {detail or 'no resources'}")
    else:
        console.print(f"[red]Bulk $export failed:[/] {escape(bulk_error or 'unknown error')}")
    console.print(
        f"Sandbox saw {stats.get('token_requests', 0)} token request(s) and "
        f"{stats.get('fhir_requests', 0):,} FHIR request(s). Total time {elapsed:.1f} s."
    )
    first = report.files.get("Patient") or next(iter(sorted(report.files.values())), None)
    console.print(
        Panel.fit(
            "\n".join(
                [
                    f"See the data:    head -c 300 {first}" if first else "No files were written.",
                    "Keep a sandbox:  epic-fhir sandbox",
                    "Pull from Epic:  epic-fhir pull --base-url URL --client-id ID \\",
                    "                   --key KEY.pem --patients ids.txt \\",
                    "                   --types Condition Observation --out DIR",
                    "In Python:       examples/pull_patients.py, and the README",
                    "                 section 'Pull many patients at once'",
                ]
            ),
            title="Next steps",
        )
    )
    return 1 if report.failures or bulk is None else 0
