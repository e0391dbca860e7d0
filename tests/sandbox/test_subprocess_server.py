"""``epic-fhir sandbox`` as a real server on 127.0.0.1 (a subprocess), driven by a script
that uses only httpx and PyJWT (an independent JWT library) — never the SDK, never the sandbox's own code.

One synchronous test (it runs once, not per anyio backend): the server is a separate process either way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from .._processes import stop

CAMILA = "erXuFYUfucBZaryVksYEcMg3"
DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
JASON = "eD.LxhDyX35TntF77l7etUA3"
GROUP = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"
FHIR_JSON = {"Accept": "application/fhir+json"}


def _command() -> list[str]:
    script = shutil.which("epic-fhir", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script]
    return [sys.executable, "-c", "import sys; from epic_fhir_async.cli import main; sys.exit(main())"]


def _read_urls(proc: subprocess.Popen[str]) -> dict[str, str]:
    """The URLs the server prints once it listens (it flushes after "Press Ctrl-C to stop.")."""
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    for line in proc.stdout:
        label, sep, value = line.partition(":")
        if sep and value.strip().startswith("http"):
            urls[label.strip()] = value.strip()
        if line.startswith("Press Ctrl-C"):
            return urls
    assert proc.stderr is not None
    pytest.fail(f"the sandbox exited early: {proc.stderr.read()}")


def _matches(page: dict[str, Any]) -> int:
    return sum(1 for entry in page.get("entry", []) if entry["search"]["mode"] == "match")


def _outcome_codes(page: dict[str, Any]) -> list[str]:
    return [
        issue["details"]["coding"][0]["code"]
        for entry in page.get("entry", [])
        if entry["search"]["mode"] == "outcome"
        for issue in entry["resource"]["issue"]
    ]


def _walk(http: httpx.Client, base: str, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    headers = {**auth, **FHIR_JSON}

    camila = http.get(f"{base}/Patient/{CAMILA}", headers=headers)
    assert camila.status_code == 200
    assert camila.json()["name"][0]["family"] == "Lopez"

    vitals = {"patient": DERRICK, "category": "vital-signs"}
    total = http.get(f"{base}/Observation", params={**vitals, "_summary": "count"}, headers=headers).json()[
        "total"
    ]
    assert total > 1000
    page = http.get(f"{base}/Observation", params={**vitals, "_count": 400}, headers=headers).json()
    pages, seen = 1, _matches(page)
    assert page["total"] == _matches(page) == 400  # paged: total is this page's entries
    while next_url := next((link["url"] for link in page["link"] if link["relation"] == "next"), None):
        assert "sessionID=" in next_url
        page = http.get(next_url, headers=headers).json()
        assert page["total"] == _matches(page)
        pages, seen = pages + 1, seen + _matches(page)
    assert pages >= 3
    assert seen == total

    empty = http.get(
        f"{base}/Observation", params={"patient": JASON, "category": "vital-signs"}, headers=headers
    )
    assert empty.status_code == 200
    assert empty.json()["total"] == 0
    assert _outcome_codes(empty.json()) == ["59204", "4101"]  # Outside Record Vital Signs, no results

    xml = http.get(f"{base}/Patient/{CAMILA}", headers=auth)
    assert xml.headers["content-type"].startswith("application/xml")
    assert xml.content.startswith(b"<?xml")
    with pytest.raises(json.JSONDecodeError):
        json.loads(xml.content)

    unauthorized = http.get(
        f"{base}/Patient/{CAMILA}", headers={"Authorization": "Bearer not-a-token", **FHIR_JSON}
    )
    assert unauthorized.status_code == 401
    assert unauthorized.content == b'""'
    assert 'error="invalid_token"' in unauthorized.headers["www-authenticate"]

    no_category = http.get(f"{base}/Observation", params={"patient": DERRICK}, headers=headers)
    assert no_category.status_code == 400
    assert no_category.json()["resourceType"] == "OperationOutcome"

    unknown_id = http.get(f"{base}/Patient/no-such-id", headers=headers)
    assert unknown_id.status_code == 404
    issue = unknown_id.json()["issue"][0]
    assert (issue["severity"], issue["code"], issue["diagnostics"]) == (
        "fatal",
        "not-found",
        "Invalid FHIR ID provided",
    )

    unknown_type = http.get(f"{base}/NotAResourceType/123", headers=headers)
    assert unknown_type.status_code == 404
    assert unknown_type.headers["content-type"].startswith("text/html")


def _export(http: httpx.Client, base: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}", **FHIR_JSON}
    kick = http.get(
        f"{base}/Group/{GROUP}/$export",
        params={"_type": "Patient,Observation,Condition"},
        headers={**headers, "Prefer": "respond-async"},
    )
    assert kick.status_code == 202
    status_url = kick.headers["content-location"]
    deadline = time.monotonic() + 30
    while (status := http.get(status_url, headers=headers)).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(float(status.headers.get("retry-after", "1")))
    assert status.status_code == 200
    manifest: dict[str, Any] = status.json()
    assert manifest["requiresAccessToken"] is True
    for item in manifest["output"] + manifest["error"]:
        ndjson = http.get(item["url"], headers={"Authorization": f"Bearer {token}"})
        assert ndjson.status_code == 200
        lines = ndjson.content.splitlines()
        assert len(lines) == item["count"]
        assert all(json.loads(line)["resourceType"] == item["type"] for line in lines)
    assert {item["type"] for item in manifest["output"]} == {"Patient", "Observation", "Condition"}
    return manifest


def test_epic_fhir_sandbox_subprocess_with_httpx_and_pyjwt(tmp_path: Path) -> None:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(private_key.public_key())), "kid": "subprocess-key"}
    jwks_path = tmp_path / "jwks.json"
    jwks_path.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    command = [*_command(), "sandbox", "--port", "0", "--client", f"my-client={jwks_path}", "--patients", "5"]
    command += ["--export-seconds", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60.0, proc.kill)  # a hung server must not hang the suite
    watchdog.start()
    try:
        urls = _read_urls(proc)
        base, token_url = urls["FHIR base URL"], urls["Token URL"]
        assert base.startswith("http://127.0.0.1:")
        now = int(time.time())
        claims = {"iss": "my-client", "sub": "my-client", "aud": token_url, "jti": str(uuid.uuid4()),
                  "iat": now, "nbf": now, "exp": now + 240}  # fmt: skip
        assertion = jwt.encode(claims, private_key, algorithm="RS384", headers={"kid": "subprocess-key"})
        with httpx.Client(timeout=20) as http:
            issued = http.post(
                token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": assertion,
                },
            )
            assert issued.status_code == 200, issued.text
            body = issued.json()
            assert (body["token_type"].lower(), body["expires_in"]) == ("bearer", 3600)
            _walk(http, base, body["access_token"])
            _export(http, base, body["access_token"])
            stats = http.get(urls["Stats"]).json()
        assert stats["token_requests"] == 1
        assert stats["fhir_requests"] > 5
    finally:
        watchdog.cancel()
        stop(proc, timeout=15)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
