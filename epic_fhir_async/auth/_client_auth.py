"""How a client proves who it is to the token endpoint: private_key_jwt, client secrets, or nothing.

Shared by every grant (client_credentials, refresh_token, and the SMART launch code exchange):

* :class:`PrivateKeyJWT`: ``client_assertion_type`` + a freshly signed ``client_assertion`` per request
  (Epic's only backend-services method and its recommended one for launches: docs/epic-notes.md §1.2, §2.3);
* :class:`ClientSecretBasic`: ``Authorization: Basic base64(urlencode(id):urlencode(secret))``, no
  ``client_id`` in the body (Epic: docs/epic-notes.md §2.3; RFC 6749 §2.3.1);
* :class:`ClientSecretPost`: ``client_id`` and ``client_secret`` in the form;
* :class:`PublicClient`: only ``client_id`` in the form (public apps).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Protocol
from urllib.parse import quote_plus

from .._config import JWT_BEARER_ASSERTION_TYPE
from .._errors import ConfigurationError
from ._assertion import build_client_assertion
from ._epic_auth import mask_secret
from ._keys import KeySource, SigningKey, load_private_keys

__all__ = [
    "ClientAuthentication",
    "ClientSecretBasic",
    "ClientSecretPost",
    "PrivateKeyJWT",
    "PublicClient",
    "client_authentication",
]


class ClientAuthentication(Protocol):
    """Adds client authentication to one token request (called once per attempt)."""

    client_id: str

    def apply(
        self, form: MutableMapping[str, str], headers: MutableMapping[str, str], token_url: str
    ) -> None: ...


def _require(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{what} must be a non-empty string")
    return value.strip()


class PublicClient:
    """No client secret: the ``client_id`` goes in the form."""

    def __init__(self, client_id: str) -> None:
        self.client_id = _require(client_id, "client_id")

    def __repr__(self) -> str:
        return f"PublicClient(client_id={self.client_id!r})"

    def apply(
        self, form: MutableMapping[str, str], headers: MutableMapping[str, str], token_url: str
    ) -> None:
        form["client_id"] = self.client_id


class ClientSecretBasic:
    """``client_secret_basic``: id and secret form-urlencoded, then base64'd into a Basic header."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = _require(client_id, "client_id")
        secret = _require(client_secret, "client_secret")
        pair = f"{quote_plus(self.client_id, safe='')}:{quote_plus(secret, safe='')}"
        self._header = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        self._secret_len = len(secret)

    def __repr__(self) -> str:
        return f"ClientSecretBasic(client_id={self.client_id!r}, client_secret='<masked, {self._secret_len} chars>')"

    def apply(
        self, form: MutableMapping[str, str], headers: MutableMapping[str, str], token_url: str
    ) -> None:
        headers["Authorization"] = self._header


class ClientSecretPost:
    """``client_secret_post``: ``client_id`` and ``client_secret`` in the form body."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = _require(client_id, "client_id")
        self._secret = _require(client_secret, "client_secret")

    def __repr__(self) -> str:
        return f"ClientSecretPost(client_id={self.client_id!r}, client_secret={mask_secret(self._secret)!r})"

    def apply(
        self, form: MutableMapping[str, str], headers: MutableMapping[str, str], token_url: str
    ) -> None:
        form["client_id"] = self.client_id
        form["client_secret"] = self._secret


class PrivateKeyJWT:
    """``private_key_jwt``: a signed assertion with a fresh ``jti`` for every attempt.

    ``keys`` are oldest first; the last (newest) signs, the others stay for :meth:`public_jwks` during a
    rotation (Epic: keep the old key published at least 5 minutes after its last use).
    """

    def __init__(
        self,
        client_id: str,
        keys: Sequence[SigningKey],
        *,
        jku: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = _require(client_id, "client_id")
        if not keys:
            raise ConfigurationError("PrivateKeyJWT needs at least one signing key")
        self.keys = tuple(keys)
        self.jku = jku
        self._wall_clock = wall_clock

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[-1]

    def __repr__(self) -> str:
        return (
            f"PrivateKeyJWT(client_id={self.client_id!r}, kid={self.signing_key.kid!r}, "
            f"alg={self.signing_key.algorithm!r})"
        )

    def assertion(self, token_url: str) -> str:
        return build_client_assertion(
            self.signing_key,
            client_id=self.client_id,
            audience=token_url,
            jku=self.jku,
            wall_clock=self._wall_clock,
        )

    def apply(
        self, form: MutableMapping[str, str], headers: MutableMapping[str, str], token_url: str
    ) -> None:
        form["client_assertion_type"] = JWT_BEARER_ASSERTION_TYPE
        form["client_assertion"] = self.assertion(token_url)


def client_authentication(
    client_id: str,
    *,
    client_secret: str | None = None,
    secret_method: str = "client_secret_basic",  # noqa: S107 (a method name)
    private_key: KeySource | Sequence[KeySource] | None = None,
    algorithm: str | None = None,
    key_id: str | None = None,
    jku: str | None = None,
    password: str | bytes | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> ClientAuthentication:
    """The client authentication a confidential or public client uses (launch code exchange and refresh).

    ``client_secret`` (Basic by default, or ``secret_method="client_secret_post"``), ``private_key``
    (``private_key_jwt``, Epic's recommended method, docs/epic-notes.md §2.3), or neither: a public client.
    """
    if client_secret is not None and private_key is not None:
        raise ConfigurationError("give client_secret or private_key, not both")
    if client_secret is not None:
        if secret_method == "client_secret_basic":
            return ClientSecretBasic(client_id, client_secret)
        if secret_method == "client_secret_post":
            return ClientSecretPost(client_id, client_secret)
        raise ConfigurationError("secret_method must be 'client_secret_basic' or 'client_secret_post'")
    if private_key is not None:
        keys = load_private_keys(private_key, algorithm=algorithm, key_id=key_id, password=password)
        return PrivateKeyJWT(client_id, keys, jku=jku, wall_clock=wall_clock)
    return PublicClient(client_id)
