"""The signed JWT that authenticates a backend client to Epic's token endpoint (``private_key_jwt``).

Epic's exact rules (docs/epic-notes.md §1.3, §1.4):

* header ``alg`` (RS384 by default), ``typ: "JWT"``, ``kid`` always (Epic picks the key by it), ``jku``
  only when given and then exactly the JWK Set URL registered on the app;
* claims ``iss`` = ``sub`` = the client id; ``aud`` = the token URL the JWT is posted to, *exactly*;
  ``jti`` a fresh UUID4 string (Epic rejects reuse before ``exp`` and non-string ids since Nov 2024);
  ``exp`` - ``iat`` and ``exp`` - ``nbf`` at most 300 s, ``exp`` at most 300 s after Epic receives it, and
  ``iat``/``nbf`` not in the future by Epic's clock.

Clock skew (docs/epic-notes.md §1.4): every failure is a bare ``invalid_client`` (§1.7), so a host clock
a few seconds off Epic's must not fail. The safe direction is the past: ``iat`` = ``nbf`` = now - 30 s and
``exp`` = now + 240 s, 270 s apart (under the 300 s cap). A host clock up to 30 s *ahead* of Epic's still
shows ``iat``/``nbf`` in Epic's past (dated at now, they would be in its future) and ``exp`` within its
5 minutes; one up to 240 s *behind* still shows ``exp`` in its future. Pushing ``exp`` later instead would
only help a host that is behind, and any ``exp`` more than 300 s ahead of Epic's clock is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .._config import JWT_BEARER_ASSERTION_TYPE
from .._errors import ConfigurationError
from ._keys import SigningKey

__all__ = [
    "ASSERTION_CLOCK_SKEW",
    "ASSERTION_LIFETIME",
    "JWT_BEARER_ASSERTION_TYPE",
    "build_client_assertion",
]

#: Seconds from now to ``exp``: below Epic's 300 s maximum, leaving a minute for a host clock ahead of Epic's.
ASSERTION_LIFETIME = 240
#: Seconds ``iat`` and ``nbf`` are dated before now, so a host clock that far ahead of Epic's still passes
#: (see the module docstring); with :data:`ASSERTION_LIFETIME`, ``exp`` - ``iat`` is 270 s.
ASSERTION_CLOCK_SKEW = 30


def build_client_assertion(
    key: SigningKey,
    *,
    client_id: str,
    audience: str,
    jku: str | None = None,
    lifetime: int = ASSERTION_LIFETIME,
    clock_skew: int = ASSERTION_CLOCK_SKEW,
    wall_clock: Callable[[], float] = time.time,
) -> str:
    """Sign a client assertion for one token request (a new ``jti`` every call; never reuse the result).

    ``exp`` is ``lifetime`` seconds from now; ``iat`` and ``nbf`` are ``clock_skew`` seconds before now, so a
    host clock up to that far ahead of Epic's is tolerated. Epic caps ``exp`` - ``iat`` at 300 s, so
    ``lifetime + clock_skew`` may not exceed it.
    """
    if not 0 < lifetime <= 300:
        raise ConfigurationError("Epic accepts client assertions that live at most 300 seconds")
    if clock_skew < 0 or lifetime + clock_skew > 300:
        raise ConfigurationError(
            f"clock_skew must be >= 0 and lifetime + clock_skew at most 300 s (Epic's cap on exp - iat); got "
            f"lifetime={lifetime}, clock_skew={clock_skew}"
        )
    import uuid  # here, not at the top: uuid imports `platform`, a cost every `import epic_fhir_async` paid

    now = int(wall_clock())
    issued = now - clock_skew
    header: dict[str, str] = {"alg": key.algorithm, "typ": "JWT", "kid": key.kid}
    if jku is not None:
        header["jku"] = jku
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": str(uuid.uuid4()),
        "iat": issued,
        "nbf": issued,
        "exp": now + lifetime,
    }
    from joserfc import jwt  # loaded on first use: most processes that import the SDK never sign

    return jwt.encode(header, claims, key.jwk, algorithms=[key.algorithm])
