"""Key loading: PEM (path, bytes, str, encrypted), JWK and JWKS; Epic's size, curve and algorithm rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import RSAKey

from epic_fhir_async import ConfigurationError, _json
from epic_fhir_async.auth import (
    InsecureKeyFileWarning,
    SigningKey,
    generate_private_key,
    load_private_keys,
    private_key_pem,
    public_jwks,
)


def _pem(native: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return native.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _one(keys: list[SigningKey]) -> SigningKey:
    assert len(keys) == 1
    return keys[0]


def test_pem_from_path_bytes_and_str_give_the_same_key(rsa_key: SigningKey, tmp_path: Path) -> None:
    pem = private_key_pem(rsa_key)
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    from_path = _one(load_private_keys(path))
    from_str_path = _one(load_private_keys(str(path)))
    from_bytes = _one(load_private_keys(pem))
    from_text = _one(load_private_keys(pem.decode()))
    assert {k.kid for k in (from_path, from_str_path, from_bytes, from_text)} == {rsa_key.kid}
    assert from_path.algorithm == "RS384"


def test_kid_is_the_rfc7638_thumbprint_unless_given(rsa_key: SigningKey) -> None:
    pem = private_key_pem(rsa_key)
    expected = RSAKey.import_key(pem).thumbprint()
    assert _one(load_private_keys(pem)).kid == expected
    assert _one(load_private_keys(pem, key_id="my-key-2026")).kid == "my-key-2026"


def test_encrypted_pem_needs_the_right_password(rsa_key: SigningKey) -> None:
    pem = private_key_pem(rsa_key, password="correct horse")
    assert b"ENCRYPTED" in pem
    assert _one(load_private_keys(pem, password="correct horse")).kid == rsa_key.kid
    assert _one(load_private_keys(pem, password=b"correct horse")).kid == rsa_key.kid
    with pytest.raises(ConfigurationError, match="password"):
        load_private_keys(pem, password="wrong")
    with pytest.raises(ConfigurationError):
        load_private_keys(pem)


def test_small_rsa_keys_are_rejected_with_the_reason() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ConfigurationError, match="1024-bit RSA key: Epic requires at least 2048"):
        load_private_keys(_pem(small))
    jwk = RSAKey.binding.convert_raw_key_to_dict(small, private=True)
    with pytest.raises(ConfigurationError, match="2048"):
        load_private_keys(dict(jwk) | {"kty": "RSA"})


@pytest.mark.parametrize(
    ("curve", "alg"), [(ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384")], ids=["P-256", "P-384"]
)
def test_ec_curves_pick_their_algorithm(curve: ec.EllipticCurve, alg: str) -> None:
    key = _one(load_private_keys(_pem(ec.generate_private_key(curve))))
    assert key.algorithm == alg
    assert key.public_jwk()["alg"] == alg


def test_other_curves_and_mismatched_algorithms_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="P-256"):
        load_private_keys(_pem(ec.generate_private_key(ec.SECP521R1())))
    p384 = _pem(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ConfigurationError, match="ES384"):
        load_private_keys(p384, algorithm="ES256")
    rsa_pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(ConfigurationError, match="RSA"):
        load_private_keys(rsa_pem, algorithm="ES384")
    assert _one(load_private_keys(rsa_pem, algorithm="RS256")).algorithm == "RS256"


def test_public_key_is_not_a_signing_key(rsa_key: SigningKey) -> None:
    public_pem = rsa_key.jwk.as_pem(private=False)
    with pytest.raises(ConfigurationError, match="private key"):
        load_private_keys(public_pem)


def test_jwk_and_jwks_load_with_their_kid_and_alg(rsa_key: SigningKey, ec_key: SigningKey) -> None:
    private_rsa = dict(rsa_key.jwk.as_dict(private=True, kid="rsa-1", alg="RS512"))
    key = _one(load_private_keys(private_rsa))
    assert (key.kid, key.algorithm) == ("rsa-1", "RS512")
    as_json = _one(load_private_keys(_json.dumps(dict(ec_key.jwk.as_dict(private=True))).decode()))
    assert as_json.algorithm == "ES384"
    jwks = {"keys": [private_rsa, dict(ec_key.jwk.as_dict(private=True, kid="ec-2"))]}
    keys = load_private_keys(jwks)
    assert [k.kid for k in keys] == ["rsa-1", "ec-2"]


def test_jwks_with_public_keys_only_is_rejected(rsa_key: SigningKey) -> None:
    with pytest.raises(ConfigurationError, match="private key"):
        load_private_keys(public_jwks(rsa_key))


def test_several_keys_for_rotation_keep_their_order(rsa_key: SigningKey, ec_key: SigningKey) -> None:
    keys = load_private_keys([rsa_key, private_key_pem(ec_key)])
    assert [k.kid for k in keys] == [rsa_key.kid, ec_key.kid]
    with pytest.raises(ConfigurationError, match="key_id"):
        load_private_keys([rsa_key, ec_key], key_id="x")
    with pytest.raises(ConfigurationError):
        load_private_keys([])


def test_bad_sources_raise_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_private_keys(tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match="JSON"):
        load_private_keys("{not json")
    with pytest.raises(ConfigurationError, match="kty"):
        load_private_keys({"kty": "oct", "k": "AAAA"})
    with pytest.raises(ConfigurationError):
        load_private_keys(
            b"-----BEGIN " + b"PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"
        )  # split: no key-shaped text in the repo
    with pytest.raises(ConfigurationError):
        load_private_keys(12345)  # type: ignore[arg-type]


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_group_readable_key_file_warns_but_loads(rsa_key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "loose.pem"
    path.write_bytes(private_key_pem(rsa_key))
    path.chmod(0o644)
    with pytest.warns(InsecureKeyFileWarning, match="chmod 600"):
        assert _one(load_private_keys(path)).kid == rsa_key.kid
    path.chmod(0o600)
    load_private_keys(path)  # no warning: the suite turns warnings into errors


@pytest.mark.parametrize("alg", ["RS384", "RS256", "ES384", "ES256"])
def test_generate_and_publish(alg: str) -> None:
    key = generate_private_key(alg)
    assert key.algorithm == alg
    jwks = public_jwks(key)
    (jwk,) = jwks["keys"]
    assert jwk["kid"] == key.kid
    assert jwk["alg"] == alg
    assert jwk["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    assert "PRIVATE" not in repr(key)
    reloaded = _one(load_private_keys(private_key_pem(key)))
    assert reloaded.kid == key.kid


def test_generate_rejects_unknown_algorithms() -> None:
    with pytest.raises(ConfigurationError):
        generate_private_key("HS256")
