"""The access token: a frozen value with a masked ``repr`` and an expiry on an injectable clock.

Epic's token responses vary (docs/epic-notes.md §1.6, §2.4): ``token_type`` is "bearer" or
"Bearer", ``expires_in`` is sometimes absent, ``scope`` comes in legacy, SMART v1 and v2 forms, and launch
responses carry extra context keys (``patient``, ``__epic.dstu2.patient``, ``need_patient_banner`` as a
string, ...). The parser accepts all of them and keeps unknown keys in :attr:`AccessToken.extra`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .._errors import TokenRequestError
from ._epic_auth import is_header_safe, mask_secret

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "MIN_TOKEN_LIFETIME",
    "AccessToken",
    "parse_scopes",
    "parse_token_response",
]

#: Lifetime assumed when a token response has no usable ``expires_in``: Epic's access tokens live one hour
#: (docs/epic-notes.md §1.8). Guessing long is safe: a token that dies earlier gets a 401, which triggers one
#: refresh and a replay.
DEFAULT_TOKEN_LIFETIME = 3600.0
#: The shortest lifetime a token is given, whatever ``expires_in`` says (0, negative, a few milliseconds): a
#: token that expires at once would cost one token request per request, each waiting behind the previous one
#: (the manager's lock). With this floor a grant asks for at most about one token a second (the manager
#: refreshes a tenth of the lifetime early). If the server rejects the token sooner, the 401 gets one new
#: token and one replay, as for any token that dies early.
MIN_TOKEN_LIFETIME = 1.0

_KNOWN_KEYS = frozenset({"access_token", "token_type", "expires_in", "scope", "refresh_token"})


def parse_scopes(value: object) -> frozenset[str]:
    """Scopes from a space-separated string (OAuth) or a list of strings; anything else gives no scopes."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        return frozenset(s for s in value if isinstance(s, str) and s)
    return frozenset()


@dataclass(frozen=True, eq=False, repr=False)
class AccessToken:
    """A bearer token and what the server said about it.

    ``expires_at`` and ``issued_at`` are on the clock of the :class:`TokenManager` that got the token
    (``time.monotonic`` unless injected), so they only compare with that clock. ``expires_at_wall`` is the
    same instant in epoch seconds, for caches that persist tokens across processes. ``extra`` keeps every
    key of the token response the SDK does not model (SMART launch context such as ``patient``).

    Equality is identity: two fetches of "the same" token are two tokens. ``repr``/``str`` never show the
    token or the refresh token.
    """

    value: str
    expires_at: float
    scopes: frozenset[str] = frozenset()
    token_type: str = "Bearer"
    issued_at: float | None = None
    expires_at_wall: float | None = None
    refresh_token: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: ``Authorization`` header value, computed once (the auth flow sets it on every request).
    authorization: str = field(init=False)

    def __post_init__(self) -> None:
        scheme = "Bearer" if self.token_type.lower() == "bearer" else self.token_type
        object.__setattr__(self, "authorization", f"{scheme} {self.value}")
        if not isinstance(self.extra, MappingProxyType):
            object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    @property
    def lifetime(self) -> float | None:
        """Seconds between issue and expiry, when the issue time is known."""
        return None if self.issued_at is None else self.expires_at - self.issued_at

    def expires_in(self, now: float) -> float:
        """Seconds left at ``now`` (on the token's clock); negative once expired."""
        return self.expires_at - now

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at

    def __repr__(self) -> str:
        extra = f", extra_keys={sorted(self.extra)!r}" if self.extra else ""
        refresh = ", refresh_token=<masked>" if self.refresh_token else ""
        return (
            f"AccessToken(value={mask_secret(self.value)!r}, token_type={self.token_type!r}, "
            f"expires_at={self.expires_at:.3f}, scopes={sorted(self.scopes)!r}{refresh}{extra})"
        )

    __str__ = __repr__


def _lifetime(raw: object) -> float:
    # expires_in may be an int, a float or a numeric string; anything unusable falls back to the default.
    if isinstance(raw, bool):
        return DEFAULT_TOKEN_LIFETIME
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            return DEFAULT_TOKEN_LIFETIME
    else:
        return DEFAULT_TOKEN_LIFETIME
    if not math.isfinite(value):
        return DEFAULT_TOKEN_LIFETIME
    return max(MIN_TOKEN_LIFETIME, value)


def parse_token_response(
    data: object,
    *,
    issued_at: float,
    wall_clock: Callable[[], float] = time.time,
    default_lifetime: float = DEFAULT_TOKEN_LIFETIME,
) -> AccessToken:
    """Build an :class:`AccessToken` from a decoded token response.

    ``issued_at`` is the manager clock's reading taken *before* the request was sent, so the computed expiry
    errs early. Raises :class:`TokenRequestError` when there is no ``access_token`` string.
    """
    if not isinstance(data, Mapping):
        raise TokenRequestError("the token endpoint answered 200 without a JSON object")
    value = data.get("access_token")
    if not isinstance(value, str) or not value.strip():
        raise TokenRequestError("the token endpoint answered 200 without an access_token")
    if not is_header_safe(value.strip()):
        # Control characters or non-ASCII would break (or smuggle) the Authorization header (RFC 6750 §2.1).
        raise TokenRequestError("the token endpoint answered an access_token that cannot go in a header")
    raw_type = data.get("token_type")
    token_type = raw_type.strip() if isinstance(raw_type, str) and raw_type.strip() else "Bearer"
    if not is_header_safe(token_type):
        # It becomes the Authorization header's scheme: "Bearer\r\nX: 1" would make h11 refuse the header and
        # quote it, token included, in an exception and in httpcore's log.
        raise TokenRequestError("the token endpoint answered a token_type that cannot go in a header")
    if token_type.lower() == "bearer":
        token_type = "Bearer"
    lifetime = _lifetime(data["expires_in"]) if "expires_in" in data else default_lifetime
    refresh = data.get("refresh_token")
    return AccessToken(
        value=value.strip(),
        expires_at=issued_at + lifetime,
        scopes=parse_scopes(data.get("scope")),
        token_type=token_type,
        issued_at=issued_at,
        expires_at_wall=wall_clock() + lifetime,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        extra={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
    )
