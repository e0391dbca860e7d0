"""The signed JWT that authenticates a backend client to Epic's token endpoint (``private_key_jwt``).

Epic's exact rules (docs/epic-notes.md §1.3, §1.4):

* header ``alg`` (RS384 by default), ``typ: "JWT"``, ``kid`` always (Epic picks the key by it), ``jku``
  only when given and then exactly the JWK Set URL registered on the app;
* claims ``iss`` = ``sub`` = the client id; ``aud`` = the token URL the JWT is posted to, *exactly*;
  ``jti`` a fresh UUID4 string (Epic rejects reuse before ``exp`` and non-string ids since Nov 2024);
  ``iat`` = ``nbf`` = now; ``exp`` at most 300 s later. We use 240 s so a server whose clock runs up to a
  minute behind ours still sees ``exp`` within its 5-minute window.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from .._config import JWT_BEARER_ASSERTION_TYPE
from .._errors import ConfigurationError
from ._keys import SigningKey

__all__ = ["ASSERTION_LIFETIME", "JWT_BEARER_ASSERTION_TYPE", "build_client_assertion"]

#: Seconds from ``iat`` to ``exp``: below Epic's 300 s maximum, leaving a minute for clock skew.
ASSERTION_LIFETIME = 240


def build_client_assertion(
    key: SigningKey,
    *,
    client_id: str,
    audience: str,
    jku: str | None = None,
    lifetime: int = ASSERTION_LIFETIME,
    wall_clock: Callable[[], float] = time.time,
) -> str:
    """Sign a client assertion for one token request (a new ``jti`` every call; never reuse the result)."""
    if not 0 < lifetime <= 300:
        raise ConfigurationError("Epic accepts client assertions that live at most 300 seconds")
    now = int(wall_clock())
    header: dict[str, str] = {"alg": key.algorithm, "typ": "JWT", "kid": key.kid}
    if jku is not None:
        header["jku"] = jku
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
    }
    from joserfc import jwt  # loaded on first use: most processes that import the SDK never sign

    return jwt.encode(header, claims, key.jwk, algorithms=[key.algorithm])
