"""Verifying the ``id_token`` of a SMART launch: signature, algorithm, issuer, audience, expiry and nonce.

Epic's id_tokens (docs/epic-notes.md §2.5): ``alg`` RS256 only, ``kid`` = base64 SHA-256 of the key,
``iss`` = ``https://<server>/oauth2``, ``aud`` = the client id, ``exp`` = ``iat`` + 300, ``nonce`` echoed,
``fhirUser`` an absolute or relative URL. The signing keys are published at the OpenID configuration's
``jwks_uri``. They are fetched through the app's HTTP client, cached, and fetched again (at most once per
``refetch_interval``) when an id_token names a ``kid`` the cache does not have, which is how a key rotation
shows up.

Where the OpenID configuration is: the smart-configuration's ``issuer``/``jwks_uri`` when it has them
(SMART 2.0), else ``[base]/.well-known/openid-configuration`` (Epic, Aug 2021+), else the one under the OAuth
root that holds the token endpoint (Epic's issuer, May 2020+).
"""

from __future__ import annotations

import base64
import hmac
import logging
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from .. import _json
from .._errors import ConfigurationError, IdTokenError
from .._http import HTTPSession
from .._urls import redact_url
from ._discovery import SmartEndpoints, absolute_url, get_json

if TYPE_CHECKING:
    from joserfc.jwk import KeySet  # joserfc loads on first use (see auth/_keys.py)

__all__ = ["IdTokenVerifier", "OpenIDConfiguration"]

logger = logging.getLogger("epic_fhir_async.auth")

#: Epic signs id_tokens with RS256 only (docs/epic-notes.md §2.5); ``none`` and HMAC are never accepted.
DEFAULT_ALGORITHMS = ("RS256",)
_ACCEPTABLE = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})


@dataclass(frozen=True)
class OpenIDConfiguration:
    """The two facts id_token verification needs from an OpenID configuration."""

    issuer: str
    jwks_uri: str


def _header(value: str) -> dict[str, Any]:
    head = value.split(".", 1)[0]
    try:
        header = _json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, TypeError):
        header = None
    if not isinstance(header, dict) or value.count(".") != 2:
        raise IdTokenError("the id_token is not a signed JWT (compact JWS)", reason="malformed")
    return header


def _config_from(doc: object, base: httpx.URL) -> OpenIDConfiguration | None:
    if not isinstance(doc, Mapping):
        return None
    issuer = doc.get("issuer")
    jwks_uri = absolute_url(doc.get("jwks_uri"), base)
    if isinstance(issuer, str) and issuer.strip() and jwks_uri is not None:
        return OpenIDConfiguration(issuer=issuer.strip(), jwks_uri=jwks_uri)
    return None


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class IdTokenVerifier:
    """Verifies id_tokens for one FHIR server; caches its OpenID configuration and signing keys.

    ``issuer``/``jwks_uri`` skip discovery when given. ``leeway`` (seconds) absorbs clock skew on ``exp`` and
    ``iat``. ``wall_clock`` is epoch seconds (tests inject the sandbox clock).
    """

    def __init__(
        self,
        *,
        issuer: str | None = None,
        jwks_uri: str | None = None,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway: float = 60.0,
        refetch_interval: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        bad = set(algorithms) - _ACCEPTABLE
        if bad or not algorithms:
            raise ConfigurationError(
                f"id_token algorithms must be asymmetric JWS algorithms, not {sorted(bad)}"
            )
        self._config = (
            OpenIDConfiguration(issuer, jwks_uri) if issuer is not None and jwks_uri is not None else None
        )
        self._issuer_override = issuer
        self._jwks_uri_override = jwks_uri
        self.algorithms = tuple(algorithms)
        self.leeway = leeway
        self.refetch_interval = refetch_interval
        self._wall_clock = wall_clock
        self._keys: KeySet | None = None
        self._fetched_at = -math.inf
        self._lock = anyio.Lock()
        self.jwks_fetches = 0  #: how many times the signing keys were downloaded

    def __repr__(self) -> str:
        return f"IdTokenVerifier(config={self._config!r}, jwks_fetches={self.jwks_fetches})"

    async def configuration(
        self, http: HTTPSession, fhir_base: str, endpoints: SmartEndpoints
    ) -> OpenIDConfiguration:
        """The issuer and ``jwks_uri``, discovered once (see the module docstring for the order)."""
        if self._config is not None:
            return self._config
        async with self._lock:
            if self._config is None:
                self._config = await self._discover(http, fhir_base, endpoints)
        return self._config

    async def _discover(
        self, http: HTTPSession, fhir_base: str, endpoints: SmartEndpoints
    ) -> OpenIDConfiguration:
        base = httpx.URL(fhir_base)
        config = _config_from(endpoints.configuration, base)
        if config is None:
            oauth_root = endpoints.token_endpoint.rsplit("/", 1)[0]
            for url in (
                f"{fhir_base}/.well-known/openid-configuration",
                f"{oauth_root}/.well-known/openid-configuration",
            ):
                config = _config_from(await get_json(http, url, {"Accept": "application/json"}), base)
                if config is not None:
                    break
        if config is None:
            raise IdTokenError(
                f"cannot verify the id_token: no OpenID configuration with issuer and jwks_uri found for "
                f"{redact_url(fhir_base)}; pass id_token_issuer= and jwks_uri= to SmartLaunch",
                reason="no_configuration",
            )
        return OpenIDConfiguration(
            issuer=self._issuer_override or config.issuer, jwks_uri=self._jwks_uri_override or config.jwks_uri
        )

    async def _key_set(self, http: HTTPSession, jwks_uri: str, kid: str | None) -> KeySet:
        keys = self._keys
        if keys is not None and (kid is None or self._has(keys, kid)):
            return keys
        async with self._lock:
            keys = self._keys
            if keys is not None and (kid is None or self._has(keys, kid)):
                return keys
            now = self._wall_clock()
            if keys is not None and now - self._fetched_at < self.refetch_interval:
                return keys  # fetched moments ago: an unknown kid now is not a rotation
            doc = await get_json(http, jwks_uri, {"Accept": "application/json"})
            self.jwks_fetches += 1
            self._fetched_at = now
            fresh = self._import(doc)
            if fresh is None:
                if keys is not None:
                    return keys
                raise IdTokenError(
                    f"cannot verify the id_token: {redact_url(jwks_uri)} did not answer a JWK Set",
                    reason="jwks_unavailable",
                )
            self._keys = fresh
            return fresh

    @staticmethod
    def _has(keys: KeySet, kid: str) -> bool:
        return any(k.kid == kid for k in keys.keys)

    @staticmethod
    def _import(doc: object) -> KeySet | None:
        if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
            return None
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        usable = []
        for jwk in doc["keys"]:
            if not isinstance(jwk, Mapping) or jwk.get("use", "sig") != "sig":
                continue
            try:
                usable.append(KeySet.import_key_set({"keys": [dict(jwk)]}).keys[0])
            except (JoseError, ValueError, TypeError, KeyError):
                logger.debug("ignoring an unusable key in the id_token JWK Set")
        return KeySet(usable) if usable else None

    async def verify(
        self,
        http: HTTPSession | httpx.AsyncClient,
        id_token: str,
        *,
        client_id: str,
        nonce: str | None,
        fhir_base: str,
        endpoints: SmartEndpoints,
    ) -> dict[str, Any]:
        """The id_token's claims after every check; raises :class:`IdTokenError` with a ``reason``."""
        header = _header(id_token)
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise IdTokenError(
                f"the id_token is signed with {alg!r}; only {', '.join(self.algorithms)} is accepted",
                reason="bad_algorithm",
            )
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        session = HTTPSession.of(http, fhir_base)
        config = await self.configuration(session, fhir_base, endpoints)
        keys = await self._key_set(session, config.jwks_uri, kid)
        if kid is not None and not self._has(keys, kid):
            raise IdTokenError(
                f"the id_token's signing key is not published at {redact_url(config.jwks_uri)}",
                reason="unknown_key",
            )
        from joserfc import jwt
        from joserfc.errors import BadSignatureError, JoseError

        try:
            token = jwt.decode(id_token, keys, algorithms=list(self.algorithms))
        except BadSignatureError:
            raise IdTokenError("the id_token's signature does not verify", reason="bad_signature") from None
        except (JoseError, ValueError) as exc:
            raise IdTokenError(
                f"the id_token cannot be decoded ({type(exc).__name__})", reason="malformed"
            ) from None
        claims = dict(token.claims)
        self._check_claims(claims, issuer=config.issuer, client_id=client_id, nonce=nonce)
        return claims

    def _check_claims(
        self, claims: Mapping[str, Any], *, issuer: str, client_id: str, nonce: str | None
    ) -> None:
        if not isinstance(claims.get("iss"), str) or claims["iss"].rstrip("/") != issuer.rstrip("/"):
            raise IdTokenError(
                f"the id_token's issuer is not {issuer!r} (the OpenID configuration's)", reason="wrong_issuer"
            )
        audiences = _audiences(claims)
        azp = claims.get("azp")
        if client_id not in audiences or (len(audiences) > 1 and azp is not None and azp != client_id):
            raise IdTokenError("the id_token was issued to another client (aud)", reason="wrong_audience")
        now = self._wall_clock()
        exp = _number(claims, "exp")
        if exp is None:
            raise IdTokenError("the id_token has no numeric exp", reason="malformed")
        if now > exp + self.leeway:
            raise IdTokenError(
                f"the id_token expired {now - exp:.0f} s ago (check this machine's clock if that is wrong)",
                reason="expired",
            )
        iat = _number(claims, "iat")
        if iat is not None and iat > now + self.leeway:
            raise IdTokenError(
                f"the id_token is issued {iat - now:.0f} s in the future: check this machine's clock (NTP)",
                reason="issued_in_future",
            )
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise IdTokenError(
                    "the id_token's nonce is not the one this launch sent (a replayed id_token)",
                    reason="wrong_nonce",
                )
