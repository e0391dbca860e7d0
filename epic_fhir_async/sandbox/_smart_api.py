"""The SMART App Launch part of :class:`~epic_fhir_async.sandbox.EpicSandbox`'s public API (docs/sandbox.md).

Stands in for Epic's app registration and Hyperspace (docs/epic-notes.md §2.2, §2.3, §2.6): a test registers a
SMART app with the settings Epic's developer site allows (exact redirect URIs, one client authentication
method, refresh tokens only for confidential clients) and mints EHR launch tokens for a patient and user that
exist. A mixin so the app module stays about routing: it checks the test's arguments, then hands them to
:class:`._smart.SmartServer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ._jwt import load_public_jwks
from ._smart import SmartServer
from ._smart_model import Identity, SmartApp, SmartSettings, provider_user

__all__ = ["SmartLaunchMixin"]


class SmartLaunchMixin:
    """SMART apps, EHR launch tokens and the ``sb.smart`` knobs."""

    _smart: SmartServer

    def register_app(
        self,
        client_id: str,
        *,
        redirect_uris: Sequence[str],
        client_secret: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        persistent_access: bool = False,
        refresh_lifetime: float | None = None,
        resource_types: Iterable[str] | None = None,
    ) -> None:
        """Register (or replace) a SMART app (docs/epic-notes.md §2.3).

        Neither ``client_secret`` nor ``jwks``: a public client (``client_id`` in the token request body, never
        a refresh token). ``client_secret``: a confidential client authenticating with HTTP Basic
        (``urlencode(id):urlencode(secret)``; ``client_secret_post`` also works). ``jwks``: a confidential
        client using ``private_key_jwt`` (assertion ``aud`` = the token URL). ``redirect_uris`` are matched
        exactly. ``persistent_access=True`` (confidential only) issues refresh tokens: ``refresh_lifetime``
        None never expires, else seconds after the code exchange, kept by every rotated refresh token.
        ``resource_types`` limits the FHIR types its tokens may read, as for backend clients (None = all).
        Raises ValueError for contradictory settings.
        """
        if not client_id:
            raise ValueError("client_id must be non-empty")
        if isinstance(redirect_uris, str) or not redirect_uris:
            raise ValueError("redirect_uris must be a non-empty list of URLs")
        for uri in redirect_uris:
            parts = urlsplit(uri)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
                raise ValueError(f"redirect URI {uri!r} must be an absolute http(s) URL without a fragment")
        if client_secret is not None and jwks is not None:
            raise ValueError("give client_secret or jwks, not both (one authentication method per app)")
        if client_secret is not None and not client_secret:
            raise ValueError("client_secret must be non-empty")
        if persistent_access and client_secret is None and jwks is None:
            raise ValueError(
                "public clients cannot get refresh tokens (Epic, docs/epic-notes.md §2.6): "
                "give a secret or jwks"
            )
        if refresh_lifetime is not None and (not persistent_access or refresh_lifetime <= 0):
            raise ValueError("refresh_lifetime needs persistent_access=True and a positive number of seconds")
        keys = load_public_jwks(jwks) if jwks is not None else None
        app = SmartApp(
            client_id, tuple(redirect_uris), client_secret, keys, persistent_access, refresh_lifetime
        )
        self._smart.add_app(app, resource_types)

    def mint_launch(
        self,
        patient: str,
        *,
        encounter: str | None = None,
        user: str = "FHIRTWO",
        context: Mapping[str, str] | None = None,
        client_id: str | None = None,
    ) -> str:
        """An EHR launch token: open the app's launch URL with ``launch=<token>&iss=<sb.base_url>``.

        ``patient``/``encounter`` must exist in ``sb.dataset``; ``user`` is a sandbox provider login
        (``FHIR``, ``FHIRTWO``) or a Practitioner id; ``context`` adds string fields to the token response
        (``location``, ``appointment``, ``loginDepartment``, ...; ``need_patient_banner`` overrides).
        ``client_id`` binds the token to one app (another app gets ``invalid_launch_token``). Valid for
        ``sb.smart.launch_lifetime`` seconds of sandbox time.
        """
        resources = self._smart.dataset.resources
        if patient not in resources.get("Patient", {}):
            raise ValueError(f"unknown patient {patient!r}: launch for a Patient in sb.dataset")
        if encounter is not None and encounter not in resources.get("Encounter", {}):
            raise ValueError(f"unknown encounter {encounter!r}")
        identity = provider_user(user)
        if identity is None:
            if user not in resources.get("Practitioner", {}):
                raise ValueError(f"user {user!r} is neither FHIR/FHIRTWO nor a Practitioner id")
            identity = Identity(user, "Practitioner", user)
        extra = dict(context or {})
        if any(not isinstance(v, str) for v in extra.values()):
            raise TypeError("launch context values must be strings (Epic's token response fields)")
        return self._smart.add_launch(patient, encounter, identity, extra, client_id)

    @property
    def smart(self) -> SmartSettings:
        """SMART test knobs: ``auto_login``, ``standalone_patient``, ``deny_next``, ... (mutable)."""
        return self._smart.settings

    @smart.setter
    def smart(self, value: SmartSettings) -> None:
        self._smart.settings = value
