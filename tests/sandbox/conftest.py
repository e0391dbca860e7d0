"""Fixtures for the sandbox tests: raw httpx on the in-process transport, or the sandbox's own objects, never
the SDK.

* the FHIR side: ``sb`` (20 patients on a frozen clock) and ``http`` (a raw client with a valid token);
* bulk: ``make_bulk``, a :class:`BulkExports` factory on a small hand-built dataset, a frozen ``clock``;
* OAuth: ``server``, an :class:`OAuthServer` with keys generated at test time, assertions signed with joserfc;
* SMART App Launch: ``smart_sb`` (3 patients) and ``smart_http`` (a raw client without credentials), and
  helpers for authorize, PKCE, code and token requests.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import secrets
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from epic_fhir_async.sandbox import EpicSandbox, SandboxClock
from epic_fhir_async.sandbox._bulk import BulkExports
from epic_fhir_async.sandbox._bulk_plan import DatasetLike
from epic_fhir_async.sandbox._http import Request
from epic_fhir_async.sandbox._oauth import OAuthServer

CAMILA = "erXuFYUfucBZaryVksYEcMg3"
DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
DERRICK_ENCOUNTER = "e6kBx6PwnxIv.5kCifScsWg3"
JASON = "eD.LxhDyX35TntF77l7etUA3"  # no Observations in the dataset: 4101 searches
EPIC_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"
JSON_ACCEPT = {"Accept": "application/fhir+json"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


# -- the FHIR side ------------------------------------------------------------------------------------------


@pytest.fixture
def sb() -> EpicSandbox:
    return EpicSandbox(seed=0, patients=20, clock=SandboxClock(frozen_at=1_780_000_000.0))


@pytest.fixture
async def http(sb: EpicSandbox) -> AsyncIterator[httpx.AsyncClient]:
    """A raw httpx client on the in-process transport, with a valid token for an all-types client."""
    headers = {"Authorization": f"Bearer {sb.issue_token('all-types')}", **JSON_ACCEPT}
    async with httpx.AsyncClient(transport=sb.transport(), base_url=sb.base_url, headers=headers) as client:
        yield client


def issue_codes(body: dict[str, object]) -> list[str]:
    """The Epic codes of an OperationOutcome's issues, in order."""
    issues = body["issue"]
    assert isinstance(issues, list)
    return [issue["details"]["coding"][0]["code"] for issue in issues]


# -- bulk ----------------------------------------------------------------------------------------------------

BULK_BASE = "http://127.0.0.1:8765/interconnect-fhir-oauth/api/FHIR/R4"
GROUP = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"
SMALL_GROUP = "eSmallGroup0001"
MEMBERS = ["pat-a", "pat-b", "pat-c"]
OUTSIDER = "pat-outside"
LAB = "http://terminology.hl7.org/CodeSystem/observation-category"


@dataclass
class TinyDataset:
    """The shape of ``sandbox._data.Dataset`` (built by hand so these tests do not depend on the data)."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    by_patient: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    binaries: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    patient_ids: list[str] = field(default_factory=list)
    group_id: str = GROUP

    def add(self, resource: dict[str, Any], patient: str | None) -> None:
        rtype, rid = resource["resourceType"], resource["id"]
        self.resources.setdefault(rtype, {})[rid] = resource
        if patient is not None:
            self.by_patient.setdefault(rtype, {}).setdefault(patient, []).append(rid)


def build_tiny_dataset() -> TinyDataset:
    """3 Group members + 1 patient outside the Group; pat-a has 5 vitals + 2 labs, pat-b 3 vitals, pat-c none; Conditions."""
    ds = TinyDataset(patient_ids=[*MEMBERS, OUTSIDER])
    for pid in ds.patient_ids:
        ds.add({"resourceType": "Patient", "id": pid, "name": [{"family": pid.upper()}]}, pid)
    counts = {"pat-a": (5, 2), "pat-b": (3, 0), "pat-c": (0, 0), OUTSIDER: (4, 4)}
    for pid, (vitals, labs) in counts.items():
        for i in range(vitals + labs):
            category = "vital-signs" if i < vitals else "laboratory"
            ds.add(
                {
                    "resourceType": "Observation",
                    "id": f"obs-{pid}-{i}",
                    "status": "final",
                    "category": [{"coding": [{"system": LAB, "code": category}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": f"Patient/{pid}"},
                    "effectiveDateTime": f"2024-01-{i + 1:02d}T08:00:00Z",
                },
                pid,
            )
    for pid in ("pat-a", OUTSIDER):
        ds.add(
            {"resourceType": "Condition", "id": f"cond-{pid}", "subject": {"reference": f"Patient/{pid}"}},
            pid,
        )
    ds.add(
        {
            "resourceType": "Group",
            "id": GROUP,
            "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in MEMBERS],
        },
        None,
    )
    ds.add(
        {
            "resourceType": "Group",
            "id": SMALL_GROUP,
            "member": [{"entity": {"reference": "Patient/pat-b"}}],
        },
        None,
    )
    return ds


@pytest.fixture
def stats() -> Counter[str]:
    return Counter()


@pytest.fixture
def dataset() -> DatasetLike:
    return build_tiny_dataset()


@pytest.fixture
def make_bulk(dataset: DatasetLike, clock: SandboxClock, stats: Counter[str]) -> Callable[..., BulkExports]:
    def factory(**options: Any) -> BulkExports:
        return BulkExports(dataset=dataset, base_url=BULK_BASE, clock=clock, stats=stats, **options)

    return factory


# -- OAuth (Backend Services) ----------------------------------------------------------------------------------

TOKEN_URL = "http://127.0.0.1:8765/interconnect-fhir-oauth/oauth2/token"
CLOCK_NOW = 1_750_000_000.0  # the ``clock`` fixture's frozen time


@pytest.fixture
def clock() -> SandboxClock:
    return SandboxClock(frozen_at=CLOCK_NOW)


@pytest.fixture(scope="session")
def rsa_key() -> RSAKey:
    key: RSAKey = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    return key


@pytest.fixture(scope="session")
def ec_key() -> ECKey:
    key: ECKey = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
    return key


def public_jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


@pytest.fixture
def server(clock: SandboxClock, rsa_key: RSAKey, ec_key: ECKey) -> OAuthServer:
    srv = OAuthServer(token_url=TOKEN_URL, clock=clock, stats=collections.Counter(), token_lifetime=3600.0)
    srv.register_client("client-a", public_jwks(rsa_key, ec_key))
    return srv


def claims(client_id: str = "client-a", now: float = CLOCK_NOW, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "jti": str(uuid.uuid4()),
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 240,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: RSAKey | ECKey, payload: dict[str, Any], alg: str = "RS384", **header: Any) -> str:
    hdr: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if key.kid is not None:
        hdr["kid"] = key.kid
    hdr.update(header)
    hdr = {k: v for k, v in hdr.items() if v is not None}
    return jwt.encode(hdr, payload, key, algorithms=[alg])


def form_request(fields: dict[str, str], *, query: str = "") -> Request:
    return Request(
        method="POST",
        path="/interconnect-fhir-oauth/oauth2/token",
        headers={"content-type": "application/x-www-form-urlencoded"},
        body=urlencode(fields).encode(),
        raw_query=query,
    )


def token_form(assertion: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **extra,
    }


PostAssertion = Callable[[str], Any]


# -- SMART App Launch ------------------------------------------------------------------------------------------

SMART_NOW = 1_780_000_000.0
REDIRECT = "https://app.example.org/smart/callback"
STANDALONE_SCOPE = "launch/patient patient/Patient.read patient/Observation.read"
EHR_SCOPE = "launch patient/Patient.read"


@pytest.fixture
def smart_sb() -> EpicSandbox:
    """A small sandbox (3 patients) on a frozen clock for the SMART App Launch tests."""
    return EpicSandbox(seed=0, patients=3, clock=SandboxClock(frozen_at=SMART_NOW))


@pytest.fixture
async def smart_http(smart_sb: EpicSandbox) -> AsyncIterator[httpx.AsyncClient]:
    """A raw httpx client on ``smart_sb``'s transport, without credentials or default headers."""
    async with httpx.AsyncClient(transport=smart_sb.transport()) as client:
        yield client


@pytest.fixture(scope="session")
def app_key() -> RSAKey:
    key: RSAKey = RSAKey.generate_key(2048, parameters={"kid": "smart-app-1"})
    return key


def pkce() -> tuple[str, str]:
    """A fresh ``(code_verifier, S256 code_challenge)`` pair."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_params(
    sb: EpicSandbox, client_id: str, challenge: str | None, *, scope: str = STANDALONE_SCOPE, **extra: str
) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": secrets.token_urlsafe(16),
        "aud": sb.base_url,
    }
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    params.update(extra)
    return {k: v for k, v in params.items() if v != ""}


def redirect_query(response: httpx.Response) -> dict[str, str]:
    """The query parameters of a 302 back to the app (asserting it goes to the registered URI)."""
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return dict(parse_qsl(urlsplit(location).query))


def error_code(response: httpx.Response) -> str:
    """The short reason on the sandbox's authorize error page."""
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "Something went wrong trying to authorize the client" in response.text
    return response.text.split('id="error-code">', 1)[1].split("<", 1)[0]


async def get_code(http: httpx.AsyncClient, sb: EpicSandbox, params: dict[str, str]) -> str:
    query = redirect_query(await http.get(sb.authorize_url, params=params))
    assert query["state"] == params["state"]
    return query["code"]


async def code_for(
    http: httpx.AsyncClient, sb: EpicSandbox, client_id: str, **params: str
) -> tuple[str, str]:
    """Authorize ``client_id`` with a fresh PKCE pair (``params`` override the defaults): ``(code, verifier)``."""
    verifier, challenge = pkce()
    return await get_code(http, sb, authorize_params(sb, client_id, challenge, **params)), verifier


def code_form(code: str, verifier: str | None, **extra: str) -> dict[str, str]:
    """An ``authorization_code`` token request body (``verifier`` None: no ``code_verifier``)."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    if verifier is not None:
        form["code_verifier"] = verifier
    return form | extra


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def assertion(sb: EpicSandbox, key: RSAKey, client_id: str) -> dict[str, str]:
    now = int(sb.clock.now())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": sb.token_url,
        "jti": str(uuid.uuid4()),
        "exp": now + 240,
    }
    token = jwt.encode({"alg": "RS384", "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=["RS384"])
    return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": token}


async def token(
    http: httpx.AsyncClient, sb: EpicSandbox, form: dict[str, str], *, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await http.post(sb.token_url, data=form, headers=headers or {})


async def read_patient(
    http: httpx.AsyncClient, sb: EpicSandbox, access_token: str, patient: str
) -> httpx.Response:
    return await http.get(
        f"{sb.base_url}/Patient/{patient}",
        headers={"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"},
    )


def json_body(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert isinstance(body, dict)
    return body
