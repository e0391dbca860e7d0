"""Authentication: the token manager, SMART Backend Services, SMART App Launch, client secrets, refresh tokens,
static tokens, and the signed-in users of a web app (``SmartSessions`` over a ``TokenSetStore``).

Every auth method is an :class:`EpicAuth` (an ``httpx.Auth`` flow) that :class:`~epic_fhir_async.EpicFHIRClient`
binds to its HTTP client and FHIR base URL. Token-fetching grants share a :class:`TokenManager`: lazy,
single-flight, refreshed a little before expiry, one refresh for any number of concurrent 401s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING

from .._lazy import lazy_names as _lazy_names
from ._epic_auth import EpicAuth as EpicAuth
from ._epic_auth import StaticTokenAuth as StaticTokenAuth

if _TYPE_CHECKING:
    from ._assertion import build_client_assertion as build_client_assertion
    from ._backend import BackendServicesAuth as BackendServicesAuth
    from ._discovery import SmartEndpoints as SmartEndpoints
    from ._discovery import discover_endpoints as discover_endpoints
    from ._grants import ClientSecretAuth as ClientSecretAuth
    from ._grants import RefreshTokenAuth as RefreshTokenAuth
    from ._id_token import IdTokenVerifier as IdTokenVerifier
    from ._keys import InsecureKeyFileWarning as InsecureKeyFileWarning
    from ._keys import SigningKey as SigningKey
    from ._keys import generate_private_key as generate_private_key
    from ._keys import load_private_keys as load_private_keys
    from ._keys import private_key_pem as private_key_pem
    from ._keys import public_jwks as public_jwks
    from ._redis_store import RedisTokenSetStore as RedisTokenSetStore
    from ._smart_auth import SmartAuth as SmartAuth
    from ._smart_launch import SmartLaunch as SmartLaunch
    from ._smart_request import AuthorizationRequest as AuthorizationRequest
    from ._smart_sessions import PendingSignIn as PendingSignIn
    from ._smart_sessions import SmartSessions as SmartSessions
    from ._smart_tokens import SmartTokenSet as SmartTokenSet
    from ._token import AccessToken as AccessToken
    from ._token_auth import TokenAuth as TokenAuth
    from ._token_cache import InMemoryTokenCache as InMemoryTokenCache
    from ._token_cache import TokenCache as TokenCache
    from ._token_cache import TokenCacheKey as TokenCacheKey
    from ._token_manager import TokenManager as TokenManager
    from ._token_store import InMemoryTokenSetStore as InMemoryTokenSetStore
    from ._token_store import TokenCipher as TokenCipher
    from ._token_store import TokenSetStore as TokenSetStore

#: Everything but the EpicAuth base and StaticTokenAuth is imported on first use: a job that passes a
#: ready token does not pay for the grants, keys and token manager, and a backend job that never signs a user
#: in does not pay for the web-app and SMART App Launch names, at ``import epic_fhir_async``
#: (docs/performance.md).
_LAZY: dict[str, str] = {
    "build_client_assertion": "_assertion",
    "BackendServicesAuth": "_backend",
    "SmartEndpoints": "_discovery",
    "discover_endpoints": "_discovery",
    "ClientSecretAuth": "_grants",
    "RefreshTokenAuth": "_grants",
    "InsecureKeyFileWarning": "_keys",
    "SigningKey": "_keys",
    "generate_private_key": "_keys",
    "load_private_keys": "_keys",
    "private_key_pem": "_keys",
    "public_jwks": "_keys",
    "SmartAuth": "_smart_auth",
    "SmartTokenSet": "_smart_tokens",
    "AccessToken": "_token",
    "TokenAuth": "_token_auth",
    "InMemoryTokenCache": "_token_cache",
    "TokenCache": "_token_cache",
    "TokenCacheKey": "_token_cache",
    "TokenManager": "_token_manager",
    "IdTokenVerifier": "_id_token",
    "RedisTokenSetStore": "_redis_store",
    "SmartLaunch": "_smart_launch",
    "AuthorizationRequest": "_smart_request",
    "PendingSignIn": "_smart_sessions",
    "SmartSessions": "_smart_sessions",
    "InMemoryTokenSetStore": "_token_store",
    "TokenCipher": "_token_store",
    "TokenSetStore": "_token_store",
}


__getattr__, __dir__ = _lazy_names(__name__, _LAZY, globals())

__all__ = [
    "AccessToken",
    "AuthorizationRequest",
    "BackendServicesAuth",
    "ClientSecretAuth",
    "EpicAuth",
    "IdTokenVerifier",
    "InMemoryTokenCache",
    "InMemoryTokenSetStore",
    "InsecureKeyFileWarning",
    "PendingSignIn",
    "RedisTokenSetStore",
    "RefreshTokenAuth",
    "SigningKey",
    "SmartAuth",
    "SmartEndpoints",
    "SmartLaunch",
    "SmartSessions",
    "SmartTokenSet",
    "StaticTokenAuth",
    "TokenAuth",
    "TokenCache",
    "TokenCacheKey",
    "TokenCipher",
    "TokenManager",
    "TokenSetStore",
    "build_client_assertion",
    "discover_endpoints",
    "generate_private_key",
    "load_private_keys",
    "private_key_pem",
    "public_jwks",
]
