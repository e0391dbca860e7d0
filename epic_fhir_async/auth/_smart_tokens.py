"""The token set of a SMART launch: tokens, launch context and id_token, as a frozen value that saves to a dict.

Epic's token response (docs/epic-notes.md §2.4) carries the launch context next to the
tokens: ``patient``, ``encounter``, ``need_patient_banner`` (a *string* such as ``"false"``),
``smart_style_url``, ``id_token``, and keys the SDK does not model (``__epic.dstu2.patient``, ``location``,
``appointment``, ``loginDepartment``, customer-configured launch tokens), which are kept as they came in
:attr:`SmartTokenSet.extra`.

Times are epoch seconds (wall clock), so a saved token set means the same thing in another process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from .._errors import ConfigurationError
from ._epic_auth import mask_secret
from ._token import AccessToken, parse_scopes

__all__ = ["SmartTokenSet", "parse_banner_flag"]

_FORMAT = 1
#: Keys of the token response that have their own attribute; every other key goes to ``extra``.
_MODELLED = frozenset(
    {
        "access_token",
        "token_type",
        "expires_in",
        "scope",
        "refresh_token",
        "id_token",
        "patient",
        "encounter",
        "need_patient_banner",
        "smart_style_url",
    }
)


def parse_banner_flag(value: object) -> bool:
    """``need_patient_banner`` as a bool: Epic sends ``"true"``/``"false"`` strings, others JSON booleans.

    Missing or unreadable means ``True``: showing a banner the EHR already shows is a cosmetic fault, hiding
    the patient's identity is a safety one.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    return not (isinstance(value, str) and value.strip().lower() in ("false", "0", "no"))


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, eq=False, repr=False)
class SmartTokenSet:
    """Tokens and launch context from a SMART launch (and the refreshes after it).

    ``id_token_claims`` are the verified claims (``None`` without an id_token); ``fhir_user`` is the
    ``fhirUser`` claim. ``client_id``, ``token_url`` and ``fhir_base`` say where the tokens belong, so a
    restored set can refresh without discovery. ``repr`` never shows a token; :meth:`to_dict` does (it is
    for your server-side session store: protect it like a password).
    """

    access_token: str
    expires_at: float
    client_id: str
    token_url: str
    fhir_base: str
    token_type: str = "Bearer"
    issued_at: float | None = None
    scopes: frozenset[str] = frozenset()
    refresh_token: str | None = None
    patient: str | None = None
    encounter: str | None = None
    need_patient_banner: bool = True
    smart_style_url: str | None = None
    id_token: str | None = None
    id_token_claims: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.extra, MappingProxyType):
            object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        if self.id_token_claims is not None and not isinstance(self.id_token_claims, MappingProxyType):
            object.__setattr__(self, "id_token_claims", MappingProxyType(dict(self.id_token_claims)))

    # -- derived ----------------------------------------------------------------------------------------
    @property
    def scope(self) -> str:
        """The granted scopes as a space-separated string (sorted; Epic's order carries no meaning)."""
        return " ".join(sorted(self.scopes))

    @property
    def fhir_user(self) -> str | None:
        """The signed-in user's FHIR resource URL (``fhirUser`` of the id_token; may be relative or absolute)."""
        claims = self.id_token_claims or {}
        return _opt_str(claims.get("fhirUser")) or _opt_str(self.extra.get("fhirUser"))

    @property
    def can_refresh(self) -> bool:
        """Whether a refresh token came (Epic may omit ``offline_access`` from ``scope`` and still send one)."""
        return self.refresh_token is not None

    def expires_in(self, now: float) -> float:
        """Seconds left at ``now`` (epoch seconds); negative once expired."""
        return self.expires_at - now

    def __repr__(self) -> str:
        refresh = ", refresh_token=<masked>" if self.refresh_token else ""
        id_token = ", id_token=<masked>" if self.id_token else ""
        extra = f", extra_keys={sorted(self.extra)!r}" if self.extra else ""
        return (
            f"SmartTokenSet(access_token={mask_secret(self.access_token)!r}, client_id={self.client_id!r}, "
            f"expires_at={self.expires_at:.0f}, scopes={sorted(self.scopes)!r}, "
            f"patient={'<set>' if self.patient else None}, encounter={'<set>' if self.encounter else None}"
            f"{refresh}{id_token}{extra})"
        )

    __str__ = __repr__

    # -- building ---------------------------------------------------------------------------------------
    @classmethod
    def from_token(
        cls,
        token: AccessToken,
        *,
        client_id: str,
        token_url: str,
        fhir_base: str,
        issued_at: float,
        id_token_claims: Mapping[str, Any] | None = None,
    ) -> SmartTokenSet:
        """The token set of a code exchange: ``token`` as parsed, ``issued_at`` in epoch seconds."""
        extra = dict(token.extra)
        lifetime = token.lifetime if token.lifetime is not None else 0.0
        expires_at = token.expires_at_wall if token.expires_at_wall is not None else issued_at + lifetime
        return cls(
            access_token=token.value,
            expires_at=expires_at,
            client_id=client_id,
            token_url=token_url,
            fhir_base=fhir_base,
            token_type=token.token_type,
            issued_at=issued_at,
            scopes=token.scopes,
            refresh_token=token.refresh_token,
            patient=_opt_str(extra.get("patient")),
            encounter=_opt_str(extra.get("encounter")),
            need_patient_banner=parse_banner_flag(extra.get("need_patient_banner")),
            smart_style_url=_opt_str(extra.get("smart_style_url")),
            id_token=_opt_str(extra.get("id_token")),
            id_token_claims=id_token_claims,
            extra={k: v for k, v in extra.items() if k not in _MODELLED},
        )

    def refreshed(self, token: AccessToken, *, issued_at: float) -> SmartTokenSet:
        """This set after a refresh: new access token and expiry; scope and refresh token when sent.

        The launch context and the id_token of the launch stay (a refresh response does not repeat them).
        """
        new_extra = {k: v for k, v in token.extra.items() if k not in _MODELLED}
        lifetime = token.lifetime if token.lifetime is not None else 0.0
        return replace(
            self,
            access_token=token.value,
            token_type=token.token_type,
            expires_at=token.expires_at_wall if token.expires_at_wall is not None else issued_at + lifetime,
            issued_at=issued_at,
            scopes=token.scopes or self.scopes,
            refresh_token=token.refresh_token or self.refresh_token,
            extra={**self.extra, **new_extra},
        )

    # -- persistence ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict with every field, tokens included: store it server-side only, never in a cookie."""
        return {
            "format": _FORMAT,
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_at": self.expires_at,
            "issued_at": self.issued_at,
            "scope": self.scope,
            "refresh_token": self.refresh_token,
            "client_id": self.client_id,
            "token_url": self.token_url,
            "fhir_base": self.fhir_base,
            "patient": self.patient,
            "encounter": self.encounter,
            "need_patient_banner": self.need_patient_banner,
            "smart_style_url": self.smart_style_url,
            "id_token": self.id_token,
            "id_token_claims": dict(self.id_token_claims) if self.id_token_claims is not None else None,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SmartTokenSet:
        """Rebuild a set saved with :meth:`to_dict`; raises :class:`ConfigurationError` if it is damaged."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ConfigurationError("not a saved SmartTokenSet (missing or unknown 'format'): launch again")
        try:
            required = {k: data[k] for k in ("access_token", "client_id", "token_url", "fhir_base")}
            expires_at = float(data["expires_at"])
            issued_at = None if data.get("issued_at") is None else float(data["issued_at"])
        except (KeyError, TypeError, ValueError):
            raise ConfigurationError("the saved SmartTokenSet is incomplete: launch again") from None
        if not all(isinstance(v, str) and v for v in required.values()):
            raise ConfigurationError("the saved SmartTokenSet is damaged: launch again")
        claims = data.get("id_token_claims")
        extra = data.get("extra")
        return cls(
            **required,
            expires_at=expires_at,
            issued_at=issued_at,
            token_type=_opt_str(data.get("token_type")) or "Bearer",
            scopes=parse_scopes(data.get("scope")),
            refresh_token=_opt_str(data.get("refresh_token")),
            patient=_opt_str(data.get("patient")),
            encounter=_opt_str(data.get("encounter")),
            need_patient_banner=parse_banner_flag(data.get("need_patient_banner")),
            smart_style_url=_opt_str(data.get("smart_style_url")),
            id_token=_opt_str(data.get("id_token")),
            id_token_claims=dict(claims) if isinstance(claims, Mapping) else None,
            extra=dict(extra) if isinstance(extra, Mapping) else {},
        )
