"""epic_fhir_async: the async SDK for Epic's FHIR R4 API.

    async with EpicFHIRClient(base_url, auth=BackendServicesAuth(client_id, "key.pem")) as client:
        async for obs in client.search("Observation", patient=pid, category="vital-signs"):
            ...

Everything public is re-exported here; modules whose names start with ``_`` are private.
"""

from __future__ import annotations

import logging as _logging

from ._bulk import BulkExportJob as BulkExportJob
from ._bulk_download import BulkDownloadResult as BulkDownloadResult
from ._bulk_download import BulkTransferStats as BulkTransferStats
from ._bulk_kickoff import BulkExportStart as BulkExportStart
from ._bulk_manifest import BulkFileRef as BulkFileRef
from ._bulk_manifest import BulkManifest as BulkManifest
from ._bulk_manifest import BulkProgress as BulkProgress
from ._bulk_manifest import PollCadence as PollCadence
from ._bulk_stream import BulkResourceStream as BulkResourceStream
from ._bundle import Page as Page
from ._checkpoint import PullCheckpoint as PullCheckpoint
from ._checkpoint import StreamCheckpoint as StreamCheckpoint
from ._client import EpicFHIRClient as EpicFHIRClient
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
from ._errors import TokenRequestError as TokenRequestError
from ._errors import TransportError as TransportError
from ._errors import Unauthorized as Unauthorized
from ._errors import UnexpectedContentError as UnexpectedContentError
from ._errors import UnprocessableEntity as UnprocessableEntity
from ._errors import UnsafeURLError as UnsafeURLError
from ._errors import UntrustedIssuer as UntrustedIssuer
from ._outcome import OperationOutcome as OperationOutcome
from ._outcome import OutcomeIssue as OutcomeIssue
from ._pull import PullStream as PullStream
from ._pull_plan import EpicExpansion as EpicExpansion
from ._pull_types import PullFailure as PullFailure
from ._pull_types import PullItem as PullItem
from ._pull_types import PullProgress as PullProgress
from ._pull_types import StreamOutcomes as StreamOutcomes
from ._retry import RetryPolicy as RetryPolicy
from ._retry import RetryTransport as RetryTransport
from ._search import SearchQuery as SearchQuery
from ._version import __version__ as __version__
from .auth import AccessToken as AccessToken
from .auth import AuthorizationRequest as AuthorizationRequest
from .auth import BackendServicesAuth as BackendServicesAuth
from .auth import ClientSecretAuth as ClientSecretAuth
from .auth import EpicAuth as EpicAuth
from .auth import IdTokenVerifier as IdTokenVerifier
from .auth import InMemoryTokenCache as InMemoryTokenCache
from .auth import InsecureKeyFileWarning as InsecureKeyFileWarning
from .auth import RefreshTokenAuth as RefreshTokenAuth
from .auth import SigningKey as SigningKey
from .auth import SmartAuth as SmartAuth
from .auth import SmartLaunch as SmartLaunch
from .auth import SmartTokenSet as SmartTokenSet
from .auth import StaticTokenAuth as StaticTokenAuth
from .auth import TokenCache as TokenCache
from .auth import TokenManager as TokenManager
from .auth import generate_private_key as generate_private_key
from .auth import load_private_keys as load_private_keys
from .auth import private_key_pem as private_key_pem
from .auth import public_jwks as public_jwks

# A library adds only a NullHandler: records go where the application's logging config sends them, and
# nowhere (not to logging's last-resort stderr handler) when it has none.
_logging.getLogger("epic_fhir_async").addHandler(_logging.NullHandler())

# -- core client (issue: Core) --
# -- auth (issue: Auth) --
# -- pull (issue: Pull) --
# -- bulk (issue: Bulk) --

__all__ = [
    "AccessToken",
    "AuthError",
    "AuthorizationDenied",
    "AuthorizationRequest",
    "BackendServicesAuth",
    "BadRequest",
    "BulkDownloadResult",
    "BulkExportError",
    "BulkExportJob",
    "BulkExportStart",
    "BulkExportTooSoon",
    "BulkFileRef",
    "BulkManifest",
    "BulkProgress",
    "BulkResourceStream",
    "BulkTransferStats",
    "ClientClosed",
    "ClientSecretAuth",
    "CodeExchangeError",
    "ConfigurationError",
    "Conflict",
    "EpicAuth",
    "EpicExpansion",
    "EpicFHIRClient",
    "EpicFHIRError",
    "FHIRStatusError",
    "Forbidden",
    "IdTokenError",
    "IdTokenVerifier",
    "InMemoryTokenCache",
    "InsecureKeyFileWarning",
    "LaunchError",
    "LaunchStateError",
    "MethodNotAllowed",
    "NotFound",
    "OperationOutcome",
    "OutcomeIssue",
    "Page",
    "PagingError",
    "PollCadence",
    "PullCheckpoint",
    "PullError",
    "PullFailure",
    "PullItem",
    "PullProgress",
    "PullStream",
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
    "SigningKey",
    "SmartAuth",
    "SmartLaunch",
    "SmartTokenSet",
    "StaticTokenAuth",
    "StreamCheckpoint",
    "StreamOutcomes",
    "TokenCache",
    "TokenManager",
    "TokenRequestError",
    "TransportError",
    "Unauthorized",
    "UnexpectedContentError",
    "UnprocessableEntity",
    "UnsafeURLError",
    "UntrustedIssuer",
    "generate_private_key",
    "load_private_keys",
    "private_key_pem",
    "public_jwks",
    "__version__",
]
