"""epic_fhir_async: the async SDK for Epic's FHIR R4 API.

    async with EpicFHIRClient(base_url, auth=BackendServicesAuth(client_id, "key.pem")) as client:
        async for obs in client.search("Observation", patient=pid, category="vital-signs"):
            ...

Everything public is re-exported here; modules whose names start with ``_`` are private.
"""

from __future__ import annotations

from ._errors import AuthError as AuthError
from ._errors import BadRequest as BadRequest
from ._errors import BulkExportError as BulkExportError
from ._errors import BulkExportTooSoon as BulkExportTooSoon
from ._errors import ConfigurationError as ConfigurationError
from ._errors import Conflict as Conflict
from ._errors import EpicFHIRError as EpicFHIRError
from ._errors import FHIRStatusError as FHIRStatusError
from ._errors import Forbidden as Forbidden
from ._errors import MethodNotAllowed as MethodNotAllowed
from ._errors import NotFound as NotFound
from ._errors import PagingError as PagingError
from ._errors import PullError as PullError
from ._errors import RateLimited as RateLimited
from ._errors import RequestTimeout as RequestTimeout
from ._errors import ServerError as ServerError
from ._errors import SessionExpired as SessionExpired
from ._errors import TokenRequestError as TokenRequestError
from ._errors import TransportError as TransportError
from ._errors import Unauthorized as Unauthorized
from ._errors import UnexpectedContentError as UnexpectedContentError
from ._errors import UnprocessableEntity as UnprocessableEntity
from ._errors import UnsafeURLError as UnsafeURLError
from ._outcome import OperationOutcome as OperationOutcome
from ._outcome import OutcomeIssue as OutcomeIssue
from ._version import __version__ as __version__
from .auth import EpicAuth as EpicAuth
from .auth import StaticTokenAuth as StaticTokenAuth

# -- core client (issue: Core) --
# -- auth (issue: Auth) --
# -- pull (issue: Pull) --
# -- bulk (issue: Bulk) --

__all__ = [
    "AuthError",
    "BadRequest",
    "BulkExportError",
    "BulkExportTooSoon",
    "ConfigurationError",
    "Conflict",
    "EpicAuth",
    "EpicFHIRError",
    "FHIRStatusError",
    "Forbidden",
    "MethodNotAllowed",
    "NotFound",
    "OperationOutcome",
    "OutcomeIssue",
    "PagingError",
    "PullError",
    "RateLimited",
    "RequestTimeout",
    "ServerError",
    "SessionExpired",
    "StaticTokenAuth",
    "TokenRequestError",
    "TransportError",
    "Unauthorized",
    "UnexpectedContentError",
    "UnprocessableEntity",
    "UnsafeURLError",
    "__version__",
]
