"""Records shared by the sandbox's SMART App Launch parts: apps, users, launches, grants.

Epic's SMART App Launch: docs/epic-notes.md §2.

Kept apart from the endpoints so the authorize side (:mod:`._smart`) and the token side
(:mod:`._smart_tokens`) can share them without importing each other.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import KeySet

from .. import _json
from ._data_people import NAMED_PATIENTS, NAMED_PRACTITIONERS, dstu2_id
from ._oauth_wire import b64url

__all__ = [
    "MYCHART_PASSWORD",
    "PROVIDER_PASSWORD",
    "PROVIDER_USERS",
    "Grant",
    "Identity",
    "Launch",
    "SmartApp",
    "SmartSettings",
    "dstu2_patient_id",
    "jwt_shaped",
    "mychart_user",
]

#: Epic's public sandbox provider logins (docs/epic-notes.md §2.2, §6), each mapped to a dataset Practitioner.
#: Why these ids: FHIRTWO "has a linked provider record" (the doc-example practitioner); FHIR is the generic
#: "User Interconnect" seen on sandbox vitals.
PROVIDER_USERS: Mapping[str, str] = {"FHIR": NAMED_PRACTITIONERS[2][0], "FHIRTWO": NAMED_PRACTITIONERS[0][0]}
PROVIDER_PASSWORD = "EpicFhir11!"  # Epic's published sandbox test password, not a secret
MYCHART_PASSWORD = "epicepic1"  # likewise, for the MyChart test patients (fhircamila, fhirderrick, ...)
_MYCHART_LOGINS: Mapping[str, str] = {
    p.ids["MYCHARTLOGIN"].lower(): p.id for p in NAMED_PATIENTS if "MYCHARTLOGIN" in p.ids
}
_DSTU2_IDS: Mapping[str, str] = {p.id: p.ids["DSTU2"] for p in NAMED_PATIENTS if "DSTU2" in p.ids}


@dataclass
class SmartSettings:
    """Test knobs for SMART App Launch, mutable while the sandbox runs (``sb.smart``).

    ``auto_login``: a standalone authorize answers 302 straight to the app as if the user logged in; False shows
    the test login page (EHR launches never show it: the launch token stands for the Hyperspace session).
    ``standalone_patient``: the patient in context of an auto-login standalone launch with ``launch/patient``
    (a patient-facing login as that patient); ``standalone_user``: the provider user of an auto-login standalone
    launch without ``launch/patient``. ``deny_next``: the next authorization (after its request checks pass)
    redirects with ``error=access_denied``, then the flag resets. ``require_pkce``: refuse authorize requests
    without a ``code_challenge`` (Epic only recommends PKCE). Lifetimes are in sandbox seconds.
    """

    auto_login: bool = True
    standalone_patient: str = "erXuFYUfucBZaryVksYEcMg3"  # Camila Lopez
    standalone_user: str = "FHIR"
    deny_next: bool = False
    require_pkce: bool = False
    code_lifetime: float = 300.0
    launch_lifetime: float = 300.0
    login_lifetime: float = 600.0


@dataclass(frozen=True)
class Identity:
    """Who authorized: a provider user (a Practitioner) or a MyChart patient; ``sub`` of the id_token."""

    username: str
    resource_type: str  # "Practitioner" or "Patient"
    fhir_id: str


def provider_user(name: str) -> Identity | None:
    """A provider login (case-insensitive user name, as Epic's login page), or None."""
    upper = name.upper()
    return Identity(upper, "Practitioner", PROVIDER_USERS[upper]) if upper in PROVIDER_USERS else None


def mychart_user(name: str) -> Identity | None:
    """A MyChart test patient's login (``fhircamila`` ...), or None."""
    fhir_id = _MYCHART_LOGINS.get(name.lower())
    return Identity(name.lower(), "Patient", fhir_id) if fhir_id is not None else None


def patient_identity(fhir_id: str) -> Identity:
    """The MyChart identity of a patient (a generated patient gets a made-up login)."""
    login = next((name for name, pid in _MYCHART_LOGINS.items() if pid == fhir_id), f"mychart-{fhir_id[:8]}")
    return Identity(login, "Patient", fhir_id)


def check_login(username: str, password: str) -> Identity | None:
    """The test login page's credential check: Epic's sandbox provider and MyChart logins."""
    provider = provider_user(username)
    if provider is not None:
        return provider if secrets.compare_digest(password, PROVIDER_PASSWORD) else None
    patient = mychart_user(username)
    if patient is not None and secrets.compare_digest(password, MYCHART_PASSWORD):
        return patient
    return None


def dstu2_patient_id(fhir_id: str) -> str:
    """``__epic.dstu2.patient``: the real DSTU2 id for Epic's named patients, a stable made-up one otherwise."""
    return _DSTU2_IDS.get(fhir_id) or dstu2_id(fhir_id)


@dataclass
class SmartApp:
    """A registered SMART app; no secret and no keys = a public client (docs/epic-notes.md §2.3)."""

    client_id: str
    redirect_uris: tuple[str, ...]
    secret: str | None = field(default=None, repr=False)
    keys: KeySet | None = field(default=None, repr=False)
    persistent_access: bool = False
    refresh_lifetime: float | None = None

    @property
    def public(self) -> bool:
        return self.secret is None and self.keys is None


@dataclass(frozen=True)
class Launch:
    """An EHR launch minted by a test (``sb.mint_launch``): what the clinician had open in Hyperspace."""

    patient: str
    encounter: str | None
    user: Identity
    context: Mapping[str, str]
    expires_at: float
    client_id: str | None  # None: any app may use it


@dataclass(frozen=True)
class Grant:
    """What one authorization granted; codes and refresh tokens carry it to the token endpoint."""

    client_id: str
    scopes: tuple[str, ...]
    identity: Identity
    patient: str | None
    encounter: str | None
    context: Mapping[str, str]
    need_patient_banner: bool
    state: str | None
    nonce: str | None


def jwt_shaped(kind: str, claims: Mapping[str, Any], *, padding: int = 300) -> str:
    """A long, opaque, JWT-looking string (Epic's codes and launch tokens are, docs/epic-notes.md §2.2).

    Never truncate it.

    Only the issuing table gives it meaning; ``padding`` random bytes make it as long as Epic's.
    """
    header = b64url(_json.dumps({"alg": "RS256", "typ": "JWT"}))
    body = {
        **claims,
        "epic.tokentype": kind,
        "jti": secrets.token_urlsafe(24),
        "pad": b64url(secrets.token_bytes(padding)),
    }
    signature = b64url(secrets.token_bytes(256))
    return f"{header}.{b64url(_json.dumps(body))}.{signature}"
