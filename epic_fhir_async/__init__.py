"""epic_fhir_async: the async SDK for Epic's FHIR R4 API.

    async with EpicFHIRClient(base_url, auth=BackendServicesAuth(client_id, "key.pem")) as client:
        async for obs in client.search("Observation", patient=pid, category="vital-signs"):
            ...

Here: the client, searches, OperationOutcome, retries, the auth methods and the error tree. The parts of
the larger features live in sub-namespaces: :mod:`epic_fhir_async.pull` (concurrent pulls),
:mod:`epic_fhir_async.bulk` (Bulk Data ``$export``), :mod:`epic_fhir_async.auth` (keys, the token manager
and cache, SMART launch details), :mod:`epic_fhir_async.sandbox` (the Epic emulator). Modules whose names
start with ``_`` are private.
"""

from __future__ import annotations

import importlib as _importlib
import logging as _logging
import warnings as _warnings
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._bundle import Page as Page
from ._client import EpicFHIRClient as EpicFHIRClient
from ._client import NoRetryWarning as NoRetryWarning
from ._errors import AuthError as AuthError
from ._errors import AuthorizationDenied as AuthorizationDenied
from ._errors import BadRequest as BadRequest
from ._errors import BulkExportError as BulkExportError
from ._errors import BulkExportTooSoon as BulkExportTooSoon
from ._errors import ClientClosed as ClientClosed
from ._errors import CodeExchangeError as CodeExchangeError
from ._errors import ConfigurationError as ConfigurationError
from ._errors import Conflict as Conflict
from ._errors import EpicFHIRError as EpicFHIRError
from ._errors import FHIRStatusError as FHIRStatusError
from ._errors import Forbidden as Forbidden
from ._errors import IdTokenError as IdTokenError
from ._errors import LaunchError as LaunchError
from ._errors import LaunchStateError as LaunchStateError
from ._errors import MethodNotAllowed as MethodNotAllowed
from ._errors import NotFound as NotFound
from ._errors import PagingError as PagingError
from ._errors import PullError as PullError
from ._errors import RateLimited as RateLimited
from ._errors import ReauthorizationRequired as ReauthorizationRequired
from ._errors import RequestTimeout as RequestTimeout
from ._errors import ResponseTooLarge as ResponseTooLarge
from ._errors import ServerError as ServerError
from ._errors import SessionExpired as SessionExpired
from ._errors import StoreUnavailable as StoreUnavailable
from ._errors import TokenRequestError as TokenRequestError
from ._errors import TokenSetUnreadable as TokenSetUnreadable
from ._errors import TransportError as TransportError
from ._errors import Unauthorized as Unauthorized
from ._errors import UnexpectedContentError as UnexpectedContentError
from ._errors import UnprocessableEntity as UnprocessableEntity
from ._errors import UnsafeURLError as UnsafeURLError
from ._errors import UntrustedIssuer as UntrustedIssuer
from ._http import RetryTransport as RetryTransport
from ._lazy import lazy_names as _lazy_names
from ._outcome import OperationOutcome as OperationOutcome
from ._outcome import OutcomeIssue as OutcomeIssue
from ._retry import RetryPolicy as RetryPolicy
from ._search import SearchQuery as SearchQuery
from ._version import __version__ as __version__
from .auth import EpicAuth as EpicAuth
from .auth import StaticTokenAuth as StaticTokenAuth

if _TYPE_CHECKING:
    from .auth import AccessToken as AccessToken
    from .auth import BackendServicesAuth as BackendServicesAuth
    from .auth import ClientSecretAuth as ClientSecretAuth
    from .auth import RefreshTokenAuth as RefreshTokenAuth
    from .auth import SmartAuth as SmartAuth
    from .auth import SmartLaunch as SmartLaunch
    from .auth import SmartTokenSet as SmartTokenSet

# A library adds only a NullHandler: records go where the application's logging config sends them, and
# nowhere (not to logging's last-resort stderr handler) when it has none.
_logging.getLogger("epic_fhir_async").addHandler(_logging.NullHandler())

#: Names that lived here before 0.2 and now live in a sub-namespace: still importable from here, with a
#: DeprecationWarning that names the new place.
_MOVED: dict[str, str] = {
    "BulkDownloadResult": "bulk",
    "BulkExportJob": "bulk",
    "BulkExportStart": "bulk",
    "BulkFileRef": "bulk",
    "BulkManifest": "bulk",
    "BulkProgress": "bulk",
    "BulkResourceStream": "bulk",
    "BulkTransferStats": "bulk",
    "PollCadence": "bulk",
    "EpicExpansion": "pull",
    "PullCheckpoint": "pull",
    "PullFailure": "pull",
    "PullItem": "pull",
    "PullProgress": "pull",
    "PullStream": "pull",
    "StreamCheckpoint": "pull",
    "StreamOutcomes": "pull",
    "AuthorizationRequest": "auth",
    "IdTokenVerifier": "auth",
    "InMemoryTokenCache": "auth",
    "InsecureKeyFileWarning": "auth",
    "SigningKey": "auth",
    "TokenCache": "auth",
    "TokenManager": "auth",
    "generate_private_key": "auth",
    "load_private_keys": "auth",
    "private_key_pem": "auth",
    "public_jwks": "auth",
}


#: Public names loaded on first use (the auth methods that fetch tokens, and the web-app names: see
#: auth/__init__.py).
_LAZY: dict[str, str] = {
    name: "auth"
    for name in (
        "AccessToken",
        "BackendServicesAuth",
        "ClientSecretAuth",
        "RefreshTokenAuth",
        "SmartAuth",
        "SmartTokenSet",
        "SmartLaunch",
    )
}


_load_lazy = _lazy_names(__name__, _LAZY, globals())[0]


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        return _load_lazy(name)
    namespace = _MOVED.get(name)
    if namespace is None:
        raise AttributeError(f"module 'epic_fhir_async' has no attribute {name!r}")
    _warnings.warn(
        f"epic_fhir_async.{name} moved to epic_fhir_async.{namespace}.{name}: import it from there",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(_importlib.import_module(f"epic_fhir_async.{namespace}"), name)


__all__ = [
    "AccessToken",
    "AuthError",
    "AuthorizationDenied",
    "BackendServicesAuth",
    "BadRequest",
    "BulkExportError",
    "BulkExportTooSoon",
    "ClientClosed",
    "ClientSecretAuth",
    "CodeExchangeError",
    "ConfigurationError",
    "Conflict",
    "EpicAuth",
    "EpicFHIRClient",
    "EpicFHIRError",
    "FHIRStatusError",
    "Forbidden",
    "IdTokenError",
    "LaunchError",
    "LaunchStateError",
    "MethodNotAllowed",
    "NoRetryWarning",
    "NotFound",
    "OperationOutcome",
    "OutcomeIssue",
    "Page",
    "PagingError",
    "PullError",
    "RateLimited",
    "ReauthorizationRequired",
    "RefreshTokenAuth",
    "RequestTimeout",
    "ResponseTooLarge",
    "RetryPolicy",
    "RetryTransport",
    "SearchQuery",
    "ServerError",
    "SessionExpired",
    "SmartAuth",
    "SmartLaunch",
    "SmartTokenSet",
    "StaticTokenAuth",
    "StoreUnavailable",
    "TokenRequestError",
    "TokenSetUnreadable",
    "TransportError",
    "Unauthorized",
    "UnexpectedContentError",
    "UnprocessableEntity",
    "UnsafeURLError",
    "UntrustedIssuer",
    "__version__",
]
