"""Private keys for client assertions: loading, checking, generating, and publishing their JWKS.

Epic's rules (docs/epic-notes.md §1.3, §1.5): RSA keys of at least 2048 bits signed with
RS256/RS384/RS512 (RS384 in Epic's examples, our default); EC keys only through a JWK Set URL, P-384 with
ES384 and P-256 with ES256. Epic picks the verification key by ``kid``, so every key has one (the RFC 7638
thumbprint unless you name it). Keys are read once, at construction: never on a request's path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .. import _json
from .._errors import ConfigurationError

if TYPE_CHECKING:
    # cryptography and joserfc load on first use, not with `import epic_fhir_async`: most processes that
    # import the SDK never sign anything (a static token, a SMART app's API calls), and the two cost ~50 ms.
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from joserfc.jwk import ECKey, RSAKey

__all__ = [
    "InsecureKeyFileWarning",
    "KeySource",
    "SigningKey",
    "generate_private_key",
    "load_private_keys",
    "private_key_pem",
    "public_jwks",
]

_RSA_ALGS = ("RS384", "RS256", "RS512")
_EC_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384"}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384"}
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, eq=False, repr=False)
class SigningKey:
    """A private key ready to sign client assertions: the key, its JWS ``alg`` and its ``kid``."""

    jwk: RSAKey | ECKey
    algorithm: str
    kid: str

    def __repr__(self) -> str:
        return f"SigningKey(kty={self.jwk.key_type!r}, algorithm={self.algorithm!r}, kid={self.kid!r})"

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with ``kid``, ``alg`` and ``use: "sig"`` (safe to publish)."""
        return dict(self.jwk.as_dict(private=False, kid=self.kid, alg=self.algorithm, use="sig"))


#: What a private key can be given as: a path, PEM/JSON text or bytes, a JWK or JWKS mapping, a key.
KeySource = Union[str, bytes, "os.PathLike[str]", Mapping[str, Any], SigningKey]


def _check_native(native: object, what: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(native, rsa.RSAPrivateKey):
        if native.key_size < _MIN_RSA_BITS:
            raise ConfigurationError(
                f"{what} is a {native.key_size}-bit RSA key: Epic requires at least {_MIN_RSA_BITS} bits "
                "(generate one with `epic-fhir keys generate`)"
            )
        return native
    if isinstance(native, ec.EllipticCurvePrivateKey):
        if native.curve.name not in _EC_ALGS:
            raise ConfigurationError(
                f"{what} is an EC key on curve {native.curve.name}: Epic accepts P-256 (ES256) and P-384 (ES384)"
            )
        return native
    if isinstance(native, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise ConfigurationError(f"{what} is a public key: the client needs the private key to sign")
    raise ConfigurationError(f"{what} is not an RSA or EC private key")


def _algorithm_for(native: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, wanted: str | None) -> str:
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(native, rsa.RSAPrivateKey):
        alg = wanted or "RS384"
        if alg not in _RSA_ALGS:
            raise ConfigurationError(f"algorithm {alg!r} does not fit an RSA key: use one of {_RSA_ALGS}")
        return alg
    expected = _EC_ALGS[native.curve.name]
    if wanted is not None and wanted != expected:
        raise ConfigurationError(
            f"algorithm {wanted!r} does not fit an EC {_CURVE_NAMES[native.curve.name]} key: use {expected}"
        )
    return expected


def _make(
    native: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, algorithm: str | None, kid: str | None
) -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from joserfc.jwk import ECKey, RSAKey

    alg = _algorithm_for(native, algorithm)
    jwk: RSAKey | ECKey = (
        RSAKey.import_key(native) if isinstance(native, rsa.RSAPrivateKey) else ECKey.import_key(native)
    )
    return SigningKey(jwk=jwk, algorithm=alg, kid=kid or jwk.thumbprint())


def _password(password: str | bytes | None) -> bytes | None:
    return password.encode() if isinstance(password, str) else password


def _from_pem(data: bytes, password: str | bytes | None, what: str) -> object:
    from cryptography.hazmat.primitives.serialization import load_der_private_key, load_pem_private_key

    try:
        if b"-----BEGIN" in data:
            return load_pem_private_key(data, password=_password(password))
        return load_der_private_key(data, password=_password(password))
    except TypeError as exc:  # encrypted without password, or a password for a clear key
        raise ConfigurationError(f"{what}: {exc}") from None
    except ValueError:
        hint = " (wrong password?)" if password is not None or b"ENCRYPTED" in data else ""
        raise ConfigurationError(f"{what} could not be read as a PEM or DER private key{hint}") from None


def _from_jwk(jwk: Mapping[str, Any], algorithm: str | None, key_id: str | None, what: str) -> SigningKey:
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC"):
        raise ConfigurationError(f"{what} has kty {kty!r}: only RSA and EC keys are supported")
    from joserfc.jwk import ECKey, RSAKey

    try:
        native: object = (RSAKey if kty == "RSA" else ECKey).binding.import_from_dict(dict(jwk))
    except (ValueError, KeyError, TypeError):
        raise ConfigurationError(f"{what} is not a valid {kty} JWK") from None
    checked = _check_native(native, what)
    alg = algorithm or (jwk.get("alg") if isinstance(jwk.get("alg"), str) else None)
    kid = key_id or (jwk.get("kid") if isinstance(jwk.get("kid"), str) else None)
    return _make(checked, alg, kid)


def _from_mapping(
    data: Mapping[str, Any], algorithm: str | None, key_id: str | None, what: str
) -> list[SigningKey]:
    if "keys" in data:
        keys = data["keys"]
        if not isinstance(keys, list) or not keys:
            raise ConfigurationError(f"{what} is a JWKS without keys")
        if key_id is not None and len(keys) > 1:
            raise ConfigurationError("key_id= names one key; a JWKS with several keys carries a kid per key")
        return [_from_jwk(k, algorithm, key_id, f"{what} key {i}") for i, k in enumerate(keys)]
    return [_from_jwk(data, algorithm, key_id, what)]


class InsecureKeyFileWarning(UserWarning):
    """A private key file can be read by users other than its owner (group or other permission bits set).

    A warning, not an error: CI secrets mounted by orchestrators often have odd modes. Turn it into an error
    with ``warnings.simplefilter("error", InsecureKeyFileWarning)``; fix it with ``chmod 600 <file>``.
    """


def _warn_if_readable(path: Path) -> None:
    # A key readable by group or others is a leak waiting to happen; say so, never refuse.
    if os.name != "posix":
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        warnings.warn(
            f"private key file {path} is readable by group or others (mode {mode:03o}); run: chmod 600 {path}",
            InsecureKeyFileWarning,
            stacklevel=3,
        )


def _from_bytes(
    data: bytes, algorithm: str | None, key_id: str | None, password: str | bytes | None, what: str
) -> list[SigningKey]:
    if data.lstrip().startswith(b"{"):
        try:
            decoded = _json.loads(data)
        except ValueError:
            raise ConfigurationError(f"{what} looks like JSON but does not parse") from None
        if not isinstance(decoded, Mapping):
            raise ConfigurationError(f"{what} is JSON but not a JWK or JWKS object")
        return _from_mapping(decoded, algorithm, key_id, what)
    native = _check_native(_from_pem(data, password, what), what)
    return [_make(native, algorithm, key_id)]


def load_private_keys(
    source: KeySource | Sequence[KeySource],
    *,
    algorithm: str | None = None,
    key_id: str | None = None,
    password: str | bytes | None = None,
) -> list[SigningKey]:
    """Load one or more private keys, oldest first (the last one signs).

    ``source`` is a path (``str`` or ``PathLike``), PEM text or bytes (optionally encrypted with
    ``password``), a JWK or JWKS (mapping or JSON text), a :class:`SigningKey`, or a list of these for
    rotation. ``algorithm`` defaults by key type (RS384, ES256, ES384) and is checked against it; ``key_id``
    defaults to the JWK's ``kid`` or the RFC 7638 thumbprint. Raises :class:`ConfigurationError` with what
    to fix; never includes key material in the message.
    """
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        if not source:
            raise ConfigurationError("no private key given")
        if key_id is not None and len(source) > 1:
            raise ConfigurationError("key_id= names one key; give several keys each with its own kid")
        out: list[SigningKey] = []
        for item in source:
            out.extend(load_private_keys(item, algorithm=algorithm, key_id=key_id, password=password))
        return out
    if isinstance(source, SigningKey):
        native = _check_native(source.jwk.private_key, "the key")
        return [
            SigningKey(
                source.jwk, _algorithm_for(native, algorithm or source.algorithm), key_id or source.kid
            )
        ]
    if isinstance(source, Mapping):
        return _from_mapping(source, algorithm, key_id, "the JWK")
    if isinstance(source, bytes):
        return _from_bytes(source, algorithm, key_id, password, "the private key")
    if isinstance(source, str) and ("-----BEGIN" in source or source.lstrip().startswith("{")):
        return _from_bytes(source.encode(), algorithm, key_id, password, "the private key")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        try:
            data = path.read_bytes()  # at construction only, never per request
        except OSError as exc:
            raise ConfigurationError(f"cannot read private key file {path}: {exc.strerror}") from None
        _warn_if_readable(path)
        return _from_bytes(data, algorithm, key_id, password, f"private key file {path}")
    raise ConfigurationError(f"unsupported private key source of type {type(source).__name__}")


def generate_private_key(alg: str = "RS384", *, kid: str | None = None) -> SigningKey:
    """A new private key for ``alg`` (RS384 by default; RS256, RS512, ES384 and ES256 too).

    RSA keys are 2048 bits, Epic's minimum (3072 for RS512); EC keys are P-384 (ES384) or P-256 (ES256).
    The ``kid`` is the RFC 7638 thumbprint unless given.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if alg in _RSA_ALGS:
        native: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(
            public_exponent=65537, key_size=3072 if alg == "RS512" else 2048
        )
    elif alg == "ES256":
        native = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        native = ec.generate_private_key(ec.SECP384R1())
    else:
        raise ConfigurationError(
            f"unsupported algorithm {alg!r}: use RS384 (default), RS256, RS512, ES384 or ES256"
        )
    return _make(native, alg, kid)


def private_key_pem(key: SigningKey, password: str | bytes | None = None) -> bytes:
    """The private key as PKCS#8 PEM, encrypted with ``password`` when given. Store it with mode 0600."""
    return key.jwk.as_pem(
        private=True, password=password.decode() if isinstance(password, bytes) else password
    )


def public_jwks(*keys: SigningKey) -> dict[str, Any]:
    """A JWK Set of the public halves (``kid``, ``alg``, ``use``): host it at your JWK Set URL."""
    return {"keys": [k.public_jwk() for k in keys]}
