"""Client-assertion verification for the sandbox token endpoint (docs/epic-notes.md §1.3 to §1.5).

Written against joserfc and the stdlib only: the sandbox never imports the SDK's auth code, so a bug there
cannot hide a matching bug here. Every rule raises :class:`AssertionRejected` with a short machine reason
(``"bad_aud"``, ``"expired"``, ...) that the OAuth server records; the wire answer is always Epic's bare
``invalid_client``. A replayed ``jti`` is the caller's check (:class:`._oauth_wire.JtiCache`): it needs state.
"""

from __future__ import annotations

import base64
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from .. import _json

__all__ = [
    "ALLOWED_ALGS",
    "MAX_ASSERTION_LIFETIME",
    "AssertionRejected",
    "StaticKeySet",
    "load_public_jwks",
    "load_static_jwks",
    "signature_verifies",
    "unverified_parts",
    "verify_assertion",
]

#: Epic's longest assertion lifetime (docs/epic-notes.md §1.4): exp ≤ now + 300 s, exp - nbf ≤ 300,
#: exp - iat ≤ 300.
MAX_ASSERTION_LIFETIME = 300.0
#: Tolerance for a client clock slightly ahead of ours on ``iat``/``nbf``.
CLOCK_SKEW = 5.0
MAX_JTI_LENGTH = 151
MIN_RSA_BITS = 2048
#: docs/epic-notes.md §1.3: RS256/384/512 for RSA keys; ES256/ES384 for EC keys, each bound to its curve.
ALLOWED_ALGS: Mapping[str, str] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "ES256": "P-256",
    "ES384": "P-384",
}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class AssertionRejected(Exception):
    """A client assertion failed one of Epic's rules; ``reason`` is a short code, never secret material."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_public_jwks(jwks: Mapping[str, Any]) -> KeySet:
    """Import a registered client's JWKS; ValueError when it is malformed or carries private key parts."""
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError("a client JWKS needs a non-empty 'keys' list")
    for index, key in enumerate(keys):
        if not isinstance(key, Mapping):
            raise TypeError(f"JWKS key #{index} is not an object")
        if _PRIVATE_MEMBERS & set(key):
            raise ValueError(f"JWKS key #{index} contains private key material; register public keys only")
        if key.get("kty") not in ("RSA", "EC"):
            raise ValueError(f"JWKS key #{index}: only RSA and EC keys are supported")
    try:
        # joserfc warns on RSA keys < 2048 bits; those register (to reproduce Epic's rejection) and fail later.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keyset: KeySet = KeySet.import_key_set({"keys": [dict(k) for k in keys]})
            return keyset
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"invalid JWKS: {type(exc).__name__}") from None


class StaticKeySet(KeySet):
    """A statically uploaded public key: Epic keeps only ``kty``/``e``/``n``, so ``kid`` is ignored.

    See docs/epic-notes.md §1.5.
    """


def load_static_jwks(jwks: Mapping[str, Any]) -> StaticKeySet:
    """Import a static key upload: one RSA key, reduced to ``kty``/``e``/``n`` (``kid``/``alg`` discarded).

    As Epic does (docs/epic-notes.md §1.5). EC keys raise ValueError: Epic cannot take them statically, so
    ES256/ES384 need a JWK Set URL (docs/epic-notes.md §1.3).
    """
    loaded = load_public_jwks(jwks)
    if len(loaded.keys) != 1:
        raise ValueError("a static key upload holds exactly one key (Epic keeps one per environment)")
    key = loaded.keys[0].as_dict(private=False)
    if key.get("kty") != "RSA":
        raise ValueError("static keys must be RSA: EC keys (ES256/ES384) need a JWK Set URL at Epic")
    with warnings.catch_warnings():  # as in load_public_jwks: a weak key registers, then fails verification
        warnings.simplefilter("ignore")
        return StaticKeySet([RSAKey.import_key({k: key[k] for k in ("kty", "e", "n")})])


def _segment_json(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        compact = jws.extract_compact(token.encode("ascii"))
        claims = _json.loads(compact.payload)
    except Exception:
        raise AssertionRejected("malformed") from None
    if not isinstance(claims, dict):
        raise AssertionRejected("malformed")
    return dict(compact.protected), claims


def _pick_key(keyset: KeySet, kid: Any) -> RSAKey | ECKey:
    """Epic picks the key by ``kid`` (docs/epic-notes.md §1.3). A kid-less JWT is accepted only with ONE key.

    Why: Epic's static-key mode discards kid (docs/epic-notes.md §1.5) so a single key verifies anything; with
    several keys and no kid there is no defined choice, and guessing would hide a client bug the real server
    may not forgive.
    """
    keys = keyset.keys
    if kid is None or isinstance(keyset, StaticKeySet):
        if len(keys) == 1:
            key = keys[0]
        else:
            raise AssertionRejected("missing_kid")
    else:
        if not isinstance(kid, str):
            raise AssertionRejected("unknown_kid")
        found = [k for k in keys if k.kid == kid]
        if not found:
            raise AssertionRejected("unknown_kid")
        key = found[0]
    if not isinstance(key, (RSAKey, ECKey)):
        raise AssertionRejected("unsupported_key")
    return key


def _key_matches_alg(key: RSAKey | ECKey, alg: str) -> None:
    family = ALLOWED_ALGS[alg]
    if isinstance(key, RSAKey):
        if family != "RSA":
            raise AssertionRejected("alg_key_mismatch")
        n = key.as_dict(private=False)["n"]
        if isinstance(n, str):
            bits = int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big").bit_length()
            if bits < MIN_RSA_BITS:
                raise AssertionRejected("weak_key")
    else:
        if family != key.as_dict(private=False).get("crv"):
            raise AssertionRejected("alg_key_mismatch")


def _number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise AssertionRejected(f"missing_{name}")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AssertionRejected(f"bad_{name}")
    return float(value)


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(header, claims)`` of a compact JWS WITHOUT verifying it (to route it, never to trust it)."""
    return _segment_json(token)


def signature_verifies(token: str, keyset: KeySet) -> bool:
    """True when ``token``'s signature verifies with the key its header picks (claims are not checked).

    The JKU cache asks this to decide whether cached keys "did not verify the JWT" (docs/epic-notes.md §1.5)
    and a refetch is due.
    """
    try:
        header, _ = _segment_json(token)
        alg = header.get("alg")
        if alg not in ALLOWED_ALGS:
            return False
        key = _pick_key(keyset, header.get("kid"))
        _key_matches_alg(key, str(alg))
        jws.deserialize_compact(token.encode("ascii"), key, algorithms=[str(alg)])
    except (AssertionRejected, JoseError, ValueError):
        return False
    return True


def verify_assertion(
    token: str,
    *,
    keys_for: Callable[[str], KeySet],
    audience: str | Collection[str],
    now: float,
    jku_for: Callable[[str], str | None] | None = None,
) -> tuple[str, str, float]:
    """Check one client assertion; returns ``(client_id, jti, exp)`` or raises :class:`AssertionRejected`.

    ``keys_for(client_id)`` returns the client's :class:`KeySet` or raises AssertionRejected itself. Replay of
    ``jti`` is the caller's job (it owns the seen-jti store). ``audience``: the token URL, or several accepted
    values (Epic customers may allow-list proxy audiences, docs/epic-notes.md §1.4). ``jku_for(client_id)``,
    when given, is the client's registered JWK Set URL: a ``jku`` header must equal it (§1.3).
    """
    header, claims = _segment_json(token)
    alg = header.get("alg")
    if alg not in ALLOWED_ALGS:  # rejects "none", HS*, PS*, EdDSA ...
        raise AssertionRejected("bad_alg")
    if "typ" in header and header["typ"] != "JWT":
        raise AssertionRejected("bad_typ")
    iss, sub = claims.get("iss"), claims.get("sub")
    if not isinstance(iss, str) or not iss:
        raise AssertionRejected("missing_iss")
    if sub != iss:
        raise AssertionRejected("sub_mismatch")
    if jku_for is not None and "jku" in header and header["jku"] != jku_for(iss):
        raise AssertionRejected("bad_jku")
    keyset: KeySet = keys_for(iss)
    key = _pick_key(keyset, header.get("kid"))
    _key_matches_alg(key, str(alg))
    try:
        jws.deserialize_compact(token.encode("ascii"), key, algorithms=[str(alg)])
    except (JoseError, ValueError):
        raise AssertionRejected("bad_signature") from None
    # Claims are checked after the signature so an unsigned forgery can never probe the rules.
    aud = claims.get("aud")
    accepted = {audience} if isinstance(audience, str) else set(audience)
    # docs/epic-notes.md §1.4: the token URL exactly (a trailing slash fails); RFC 7519 also allows an
    # array of one.
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if not isinstance(aud, str) or aud not in accepted:
        raise AssertionRejected("bad_aud")
    exp = _number(claims, "exp", required=True)
    assert exp is not None
    if exp <= now:
        raise AssertionRejected("expired")
    if exp > now + MAX_ASSERTION_LIFETIME:
        raise AssertionRejected("exp_too_far")
    for name in ("nbf", "iat"):
        value = _number(claims, name, required=False)
        if value is None:
            continue  # docs/epic-notes.md §1.4: Epic's own sample omits nbf; both optional.
        if value > now + CLOCK_SKEW:
            raise AssertionRejected(f"{name}_in_future")
        if value > exp or exp - value > MAX_ASSERTION_LIFETIME:
            raise AssertionRejected(f"{name}_window")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:  # docs/epic-notes.md §1.4: a JSON string since Nov 2024
        raise AssertionRejected("bad_jti")
    if len(jti) > MAX_JTI_LENGTH:
        raise AssertionRejected("jti_too_long")
    return iss, jti, exp
