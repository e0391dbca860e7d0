"""What a worker needs to build its own client: a picklable description, with no secret inside.

A Dask task and its arguments are pickled and may cross machines, so the description holds the *path* of the
private key (or the *name* of a variable holding a bearer token), never the key or the token: each worker
reads them itself, where they are needed. :meth:`ClientSpec.check_on_worker` is what the driver runs on every
worker before the job starts, so a key that is missing on one machine is a clear error before any request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from .._config import DEFAULT_TIMEOUT, MAX_RESPONSE_BYTES
from .._errors import ConfigurationError
from .._retry import RetryPolicy
from .._urls import is_loopback, redact_url

if TYPE_CHECKING:
    from .. import EpicFHIRClient
    from ..auth import EpicAuth, SigningKey, TokenCache

__all__ = ["ClientSpec", "KeyFileAuth", "TokenEnvAuth"]


@dataclass(frozen=True)
class KeyFileAuth:
    """SMART Backend Services credentials whose private key is read on each worker.

    ``key_path`` must exist at the same path on every worker (a mounted secret, a shared volume);
    ``password_env`` names an environment variable *on the worker* holding an encrypted key's password.
    The other fields are :class:`~epic_fhir_async.auth.BackendServicesAuth`'s.
    """

    client_id: str
    key_path: str
    token_url: str | None = None
    scope: str | None = None
    algorithm: str | None = None
    key_id: str | None = None
    jku: str | None = None
    password_env: str | None = None
    leeway: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not self.client_id.strip():
            raise ConfigurationError("KeyFileAuth needs a non-empty client_id")
        if not isinstance(self.key_path, (str, os.PathLike)) or not str(self.key_path):
            raise ConfigurationError("KeyFileAuth needs key_path, the private key file's path on the workers")
        object.__setattr__(self, "key_path", os.fspath(self.key_path))

    def check(self) -> None:
        """On a worker: the key file is there and loads (raises :class:`ConfigurationError` saying why not)."""
        self._load()

    def _load(self) -> list[SigningKey]:
        from ..auth import load_private_keys

        path = Path(self.key_path)
        if not path.is_file():
            what = "is a directory, not a key file" if path.is_dir() else "does not exist"
            raise ConfigurationError(
                f"the private key {path} {what} on this worker: the key is read on every worker, so it must be "
                "at the same path on each machine (a mounted secret or a shared volume)"
            )
        password: str | None = None
        if self.password_env is not None:
            password = os.environ.get(self.password_env) or None
            if password is None:
                raise ConfigurationError(
                    f"the environment variable {self.password_env} (the key's password) is not set on this worker"
                )
        return load_private_keys(path, algorithm=self.algorithm, key_id=self.key_id, password=password)

    def build(self, cache: TokenCache | None) -> EpicAuth:
        from ..auth import BackendServicesAuth

        return BackendServicesAuth(
            self.client_id,
            self._load(),
            token_url=self.token_url,
            scope=self.scope,
            leeway=self.leeway,
            jku=self.jku,
            cache=cache,
        )


@dataclass(frozen=True)
class TokenEnvAuth:
    """A bearer token read on each worker from an environment variable (``EPIC_FHIR_ACCESS_TOKEN`` by default).

    Nothing is shared or refreshed: the token is used until it expires. For short jobs and tests.
    """

    variable: str = "EPIC_FHIR_ACCESS_TOKEN"

    def check(self) -> None:
        if not os.environ.get(self.variable):
            raise ConfigurationError(f"the environment variable {self.variable} is not set on this worker")

    def build(self, cache: TokenCache | None) -> EpicAuth:
        from ..auth import StaticTokenAuth

        self.check()
        return StaticTokenAuth(os.environ[self.variable])


FleetAuth = KeyFileAuth | TokenEnvAuth


@dataclass(frozen=True)
class ClientSpec:
    """How each worker builds its :class:`~epic_fhir_async.EpicFHIRClient` (picklable, no secret inside).

    ``base_url``, ``retry``, ``timeout``, ``epic_client_id``, ``max_response_bytes`` and ``http2`` are the
    client's arguments; ``auth`` says how the worker gets its credentials (:class:`KeyFileAuth`,
    :class:`TokenEnvAuth`, or ``None`` for an open server).
    """

    base_url: str
    auth: FleetAuth | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = DEFAULT_TIMEOUT
    epic_client_id: str | None = None
    max_response_bytes: int | None = MAX_RESPONSE_BYTES
    http2: bool = False

    def __post_init__(self) -> None:
        try:
            url = httpx.URL(str(self.base_url).rstrip("/"))
        except httpx.InvalidURL:
            raise ConfigurationError("base_url must be an absolute http(s) URL of the FHIR R4 base") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError("base_url must be an absolute http(s) URL of the FHIR R4 base")
        if url.scheme == "http" and not is_loopback(url.host):
            raise ConfigurationError(
                f"refusing plain http:// for {redact_url(url)}: bearer tokens need TLS (loopback is allowed)"
            )
        if self.auth is not None and not isinstance(self.auth, (KeyFileAuth, TokenEnvAuth)):
            raise ConfigurationError(
                "ClientSpec(auth=...) takes KeyFileAuth or TokenEnvAuth: the key or token is read on each "
                f"worker, never sent to it (got {type(self.auth).__name__})"
            )
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {type(self.retry).__name__}")
        object.__setattr__(self, "base_url", str(url))

    @property
    def client_id(self) -> str:
        """What the shared token and rate budget are keyed by: Epic throttles per client id."""
        auth = self.auth
        if isinstance(auth, KeyFileAuth):
            return auth.client_id
        return self.epic_client_id or ""

    def check_on_worker(self) -> None:
        """Run on each worker before the job: the credentials can be read there."""
        if self.auth is not None:
            self.auth.check()

    def build(
        self,
        *,
        cache: TokenCache | None = None,
        wrap: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None = None,
    ) -> EpicFHIRClient:
        """The worker's client. ``cache`` shares tokens (Redis); ``wrap`` puts a transport (the fleet's rate
        budget) under the client's retrying transport, so every attempt passes through it."""
        from .. import EpicFHIRClient

        inner: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(
            http2=self.http2,
            retries=0,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=40),
        )
        if wrap is not None:
            inner = wrap(inner)
        return EpicFHIRClient(
            self.base_url,
            auth=self.auth.build(cache) if self.auth is not None else None,
            transport=inner,
            timeout=self.timeout,
            retry=self.retry,
            epic_client_id=self.epic_client_id,
            max_response_bytes=self.max_response_bytes,
        )
