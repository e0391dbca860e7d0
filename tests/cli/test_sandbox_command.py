"""``epic-fhir sandbox``: argument handling, and flags that reach the sandbox (its config, its clients); then as a
person runs it: the banner tells a client what it needs, ``--static-token`` serves tools that take a fixed token,
and every refusal is logged with its reason. The server itself is exercised in tests/sandbox/ (``test_serve.py``,
``test_subprocess_server.py``)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import httpx
import pytest
from joserfc.jwk import RSAKey

from epic_fhir_async.bulk import EPIC_SANDBOX_BULK_GROUP_ID
from epic_fhir_async.cli import _common, _sandbox
from tests.cli.conftest import SERVED_CLIENT, KeyPair, ServedSandbox, Shell


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _sandbox.register(parser.add_subparsers())
    return parser.parse_args(["sandbox", *argv])


def test_defaults_bind_loopback_8765() -> None:
    args = _parse()
    assert (args.host, args.port, args.seed, args.patients) == ("127.0.0.1", 8765, 0, 100)
    assert args.token_lifetime == 3600.0
    assert args.func is _sandbox.run


def test_flags_are_parsed(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "EC"}]}), encoding="utf-8")
    args = _parse(
        "--client", f"my-client={jwks}", "--rate-limit", "5", "--drop-rate", "0.1", "--latency-ms", "20"
    )
    assert (args.rate_limit, args.drop_rate, args.latency_ms) == (5.0, 0.1, 20.0)
    assert _sandbox._load_clients(args.client) == [("my-client", {"keys": [{"kty": "EC"}]})]


@pytest.mark.parametrize("spec", ["no-equals", "=file.json", "id="])
def test_bad_client_spec_exits(spec: str) -> None:
    with pytest.raises(SystemExit):
        _sandbox._load_clients([spec])


def test_missing_jwks_file_exits(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="cannot read"):
        _sandbox._load_clients([f"c={tmp_path / 'absent.json'}"])


@pytest.mark.parametrize(
    ("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False)]
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert _common.is_loopback(host) is loopback


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    key = RSAKey.generate_key(2048, parameters={"kid": "k"})
    path.write_text(json.dumps({"keys": [key.as_dict(private=False)]}), encoding="utf-8")
    return path


def test_flags_become_config(jwks_file: Path) -> None:
    args = _parse(
        "--client", f"narrow={jwks_file}", "--client-types", "narrow=Patient,Observation?category=laboratory",
        "--client", "remote=https://keys.example.test/jwks.json", "--scope-style", "v2",
        "--environment", "production", "--root-path", "/FHIRProxy", "--token-audience", "https://proxy.test/t",
        "--page-size", "50", "--session-ttl", "30", "--unknown-params", "warn",
        "--directory", "Other=https://other.test/api/FHIR/R4/", "--retry-after", "5", "--retry-after-http-date",
        "--export-cooldown", "86400", "--export-resources-per-file", "3000", "--export-retention", "60",
        "--export-since", "ignore", "--no-export-type-filter", "--export-allow-post",
        "--export-synthetic-observations", "10", "--port", "0",
    )  # fmt: skip
    sb = _sandbox.build_sandbox(args)
    config = sb.config
    assert (config.environment, config.root_path, config.token_audiences) == (
        "production",
        "/FHIRProxy",
        ("https://proxy.test/t",),
    )
    assert (config.page_size, config.session_ttl, config.unknown_params) == (50, 30.0, "warn")
    assert config.directory == (("Other", "https://other.test/api/FHIR/R4/"),)
    assert (sb.faults.retry_after, sb.faults.retry_after_http_date) == (5.0, True)
    bulk = sb.bulk
    assert (bulk.cooldown_seconds, bulk.resources_per_file, bulk.retention_seconds) == (86400.0, 3000, 60.0)
    assert (bulk.since, bulk.type_filter, bulk.allow_post, bulk.synthetic_observations) == (
        "ignore",
        False,
        True,
        10,
    )
    assert sb.oauth.allowed_types("narrow") == frozenset({"Patient", "Observation?category=laboratory"})
    assert sb.oauth.allowed_types("remote") is None
    assert sb.oauth.jku.url_for("remote") == "https://keys.example.test/jwks.json"
    assert sb.oauth.jku.url_for("narrow") is None


def test_defaults_match_the_config_defaults() -> None:
    from epic_fhir_async.sandbox import SandboxConfig

    sb = _sandbox.build_sandbox(_parse("--patients", "0"))
    defaults = SandboxConfig()
    for name in ("page_size", "session_ttl", "export_resources_per_file", "export_retention", "root_path"):
        assert getattr(sb.config, name) == getattr(defaults, name), name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--client-types", "ghost=Patient"], "no --client"),
        (["--page-size", "5000"], "invalid sandbox option"),
        (["--root-path", "FHIRProxy"], "invalid sandbox option"),
        (["--directory", "no-url"], "--directory"),
        (["--client", "bad=ftp://keys.example.test/jwks.json"], "cannot read"),
    ],
)
def test_bad_flags_exit_with_a_message(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        _sandbox.build_sandbox(_parse("--patients", "0", *argv))


# -- as a person runs it: the banner, the static token, the refusal log -------------------------------------
def test_banner_says_what_a_client_needs_and_the_token_command_works(
    served: ServedSandbox, shell: Shell
) -> None:
    fields = served.fields
    assert fields["Group id"].startswith(EPIC_SANDBOX_BULK_GROUP_ID + " ")
    first, second, third = (pid.strip() for pid in fields["Patient ids"].split(" and ")[0].split(","))
    assert first == "erXuFYUfucBZaryVksYEcMg3"  # Camila Lopez, Epic's first sandbox patient
    assert fields["Clients"] == SERVED_CLIENT
    printed = fields["Get a token"].split("  (")[0].split()
    assert printed[:2] == ["epic-fhir", "token"]
    command = [str(served.key.private) if word == "KEY.pem" else word for word in printed[1:]]
    result = shell(*command)
    assert result.status == 0, str(result)
    assert f"token URL: {served.token_url}" in result.out
    pulled = shell(
        "pull", *served.auth, "--patients", first, second, third, "--types", "Patient", "--out", "o"
    )
    assert pulled.status == 0, str(pulled)
    assert len((shell.cwd / "o" / "Patient.ndjson").read_bytes().splitlines()) == 3
    assert served.banner[-2:] == [
        "Refused tokens are logged below with the reason (Epic's answer never says why).",
        "Press Ctrl-C to stop.",
    ]


def test_static_token_works_for_other_tools_and_refusals_are_logged(
    served_key: KeyPair, shell: Shell
) -> None:
    sandbox = ServedSandbox(served_key, "--static-token", "my-fixed-token")
    try:
        use = sandbox.fields["Use it"]
        assert use.startswith("EPIC_FHIR_ACCESS_TOKEN=TOKEN epic-fhir pull --base-url ")
        assert "my-fixed-token" not in "\n".join(sandbox.banner)  # never echoed
        camila = "erXuFYUfucBZaryVksYEcMg3"
        read = httpx.get(
            f"{sandbox.base_url}/Patient/{camila}",
            headers={"Authorization": "Bearer my-fixed-token", "Accept": "application/fhir+json"},
        )
        assert read.status_code == 200
        env = {"EPIC_FHIR_ACCESS_TOKEN": "my-fixed-token"}
        pulled = shell("pull", "--base-url", sandbox.base_url, "--patients", camila, "--types", "Patient",
                       "Condition", "--out", "o", env=env)  # fmt: skip
        assert pulled.status == 0, str(pulled)
        assert sandbox.stats().get("token_requests", 0) == 0
        refused = httpx.get(
            f"{sandbox.base_url}/Patient/{camila}",
            headers={"Authorization": "Bearer not-the-token", "Accept": "application/fhir+json"},
        )
        assert refused.status_code == 401
    finally:
        sandbox.stop()
    log = sandbox.log.splitlines()
    assert log[1:] == ["epic-fhir sandbox: interrupted"], sandbox.log  # stopped with Ctrl-C
    assert re.fullmatch(
        r"epic-fhir sandbox: \d\d:\d\d:\d\d bearer token refused \(401\): unknown or expired", log[0]
    )


def test_static_token_must_be_a_token() -> None:
    with pytest.raises(SystemExit, match="--static-token must be a non-empty token without spaces"):
        _sandbox.build_sandbox(_parse("--patients", "0", "--static-token", "two words"))


# -- the emulator's options as flags: --no-outside-records, --epic-bulk ---------------------------------------
CAMILA = "erXuFYUfucBZaryVksYEcMg3"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}


def _outcome_codes(base_url: str, token: str, query: str) -> list[str]:
    """Epic's codes of the OperationOutcome entries that end a searchset."""
    bundle = httpx.get(f"{base_url}/{query}", headers=_bearer(token), timeout=10)
    assert bundle.status_code == 200, bundle.text
    return [
        coding["code"]
        for entry in bundle.json().get("entry", [])
        if entry["resource"]["resourceType"] == "OperationOutcome"
        for issue in entry["resource"]["issue"]
        for coding in issue.get("details", {}).get("coding", [])
    ]


def test_no_outside_records_ends_searchsets_without_epics_warnings(served_key: KeyPair) -> None:
    plain = ServedSandbox(served_key, "--static-token", "t1")
    quiet = ServedSandbox(served_key, "--static-token", "t2", "--no-outside-records")
    try:
        for query in (f"Condition?patient={CAMILA}", f"Procedure?patient={CAMILA}"):
            assert "59204" in _outcome_codes(plain.base_url, "t1", query)  # as on Epic's sandbox
            codes = _outcome_codes(quiet.base_url, "t2", query)
            assert "59204" not in codes, codes
            assert "59205" not in codes, codes
    finally:
        plain.stop()
        quiet.stop()


def _kick_off(sandbox: ServedSandbox, token: str) -> httpx.Response:
    group = sandbox.fields["Group id"].split()[0]
    headers = {**_bearer(token), "Prefer": "respond-async"}
    return httpx.get(f"{sandbox.base_url}/Group/{group}/$export", headers=headers, timeout=10)


def test_epic_bulk_runs_exports_as_epic_does(served_key: KeyPair) -> None:
    sandbox = ServedSandbox(served_key, "--static-token", "tok", "--epic-bulk", quick_exports=False)
    try:
        started = _kick_off(sandbox, "tok")
        assert started.status_code == 202, started.text
        status_url = started.headers["content-location"]
        poll = httpx.get(status_url, headers=_bearer("tok"), timeout=10)
        assert poll.status_code == 202  # three hours of sandbox time: still running
        assert "retry-after" not in poll.headers
        assert "x-progress" not in poll.headers
        assert httpx.delete(status_url, headers=_bearer("tok"), timeout=10).status_code == 202
        again = _kick_off(sandbox, "tok")  # the job is gone, but Epic's once-a-day window holds
        assert again.status_code == 429, again.text
        assert "59159" in again.text
        assert 86000 < int(again.headers["retry-after"]) <= 86400
    finally:
        sandbox.stop()


def test_without_epic_bulk_polls_say_when_to_come_back_and_kick_offs_are_not_throttled(
    served_key: KeyPair,
) -> None:
    sandbox = ServedSandbox(served_key, "--static-token", "tok", quick_exports=False)
    try:
        started = _kick_off(sandbox, "tok")
        assert started.status_code == 202, started.text
        status_url = started.headers["content-location"]
        poll = httpx.get(status_url, headers=_bearer("tok"), timeout=10)
        assert poll.status_code == 202  # a two-second job
        assert "retry-after" in poll.headers
        assert "x-progress" in poll.headers
        assert httpx.delete(status_url, headers=_bearer("tok"), timeout=10).status_code == 202
        assert _kick_off(sandbox, "tok").status_code == 202
    finally:
        sandbox.stop()


def test_an_export_flag_given_with_epic_bulk_overrides_its_part() -> None:
    from epic_fhir_async.sandbox import SandboxConfig

    sb = _sandbox.build_sandbox(_parse("--patients", "0", "--epic-bulk", "--export-cooldown", "0"))
    epic = SandboxConfig.epic_bulk()
    assert sb.config.export_cooldown == 0.0
    assert (sb.config.export_seconds, sb.config.export_progress_headers) == (epic.export_seconds, False)
    plain = _sandbox.build_sandbox(_parse("--patients", "0"))
    assert (plain.config.export_seconds, plain.config.export_cooldown) == (2.0, 0.0)
    assert plain.config.outside_records is True


def test_help_names_the_new_flags(shell: Shell) -> None:
    shown = shell("sandbox", "--help")
    assert shown.status == 0, str(shown)
    text = " ".join(shown.out.split())
    assert '--no-outside-records end clinical searchsets without Epic\'s "Outside Record" warnings' in text
    assert "--epic-bulk run Bulk Data exports as Epic does" in text
    assert "(default 2.0; 10800.0 with --epic-bulk)" in text
