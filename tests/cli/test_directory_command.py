"""``epic-fhir directory NAME`` as a user runs it: a subprocess against the sandbox's directory on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox

pytestmark = pytest.mark.anyio
EXTRAS = (
    ("Hôpital Saint-Éloi", "https://fhir.saint-eloi.test/FHIRProxy/api/FHIR/R4/"),
    ("Mercy Health", "https://fhir.mercy-ohio.test/FHIR/api/FHIR/R4/"),
)


def _command() -> list[str]:
    script = shutil.which("epic-fhir", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script]
    return [sys.executable, "-c", "import sys; from epic_fhir_async.cli import main; sys.exit(main())"]


async def _run(*args: str, cache: Path) -> tuple[int, str, str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    done = await anyio.run_process([*_command(), "directory", *args], env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_directory_command_prints_names_and_r4_base_urls(tmp_path: Path) -> None:
    sb = EpicSandbox(seed=0, patients=0, directory=EXTRAS)
    async with sb.serve() as base_url:
        url = f"{sb.origin}/Endpoints/R4"
        status, out, err = await _run("hopital", "eloi", "--url", url, cache=tmp_path)
        assert (status, err) == (0, "")
        assert out.split() == ["Hôpital", "Saint-Éloi", "https://fhir.saint-eloi.test/FHIRProxy/api/FHIR/R4"]
        status, out, _ = await _run("EPIC SANDBOX", "--url", url, "--json", cache=tmp_path)
        assert status == 0
        (line,) = out.splitlines()
        found = json.loads(line)
        assert (found["base_url"], found["fhir_version"], found["retired"]) == (base_url, "R4", False)
        status, out, err = await _run("no such organisation", "--url", url, cache=tmp_path)
        assert (status, out) == (1, "")
        assert "no organisation matches 'no such organisation' (3 entries" in err
    assert list((tmp_path / "epic-fhir").glob("endpoints-*.json"))  # the download was cached


async def test_directory_command_reads_a_saved_file_and_says_what_is_wrong(tmp_path: Path) -> None:
    sb = EpicSandbox(seed=0, patients=0, directory=EXTRAS)
    async with sb.serve():
        saved = tmp_path / "brands.json"
        status, _, _ = await _run(
            "mercy", "--url", f"{sb.origin}/Endpoints/Brands", "--no-cache", cache=tmp_path
        )
        assert status == 0
        async with httpx.AsyncClient() as http:  # what a user saves with curl
            body = (await http.get(f"{sb.origin}/Endpoints/Brands")).content
        await anyio.Path(saved).write_bytes(body)
    status, out, _ = await _run("mercy", "--file", str(saved), cache=tmp_path)
    assert status == 0
    assert "https://fhir.mercy-ohio.test/FHIR/api/FHIR/R4" in out
    assert not (tmp_path / "epic-fhir").exists()  # --no-cache and --file keep nothing
    status, _, err = await _run("mercy", "--url", "http://open.epic.example/Endpoints/R4", cache=tmp_path)
    assert status == 2
    assert "must be https://" in err
    status, _, err = await _run("mercy", "--file", str(tmp_path / "missing.json"), cache=tmp_path)
    assert status == 1
    assert "missing.json" in err
