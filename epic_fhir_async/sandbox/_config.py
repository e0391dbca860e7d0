"""The sandbox's configuration: a frozen :class:`SandboxConfig` and the runtime-mutable :class:`SandboxFaults`.

Defaults are Epic's where Epic's are known (docs/epic-notes.md §0 root path, §1.5 JKU cache, §3.5 page sizes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .._config import EPIC_MAX_PAGE_SIZE
from ._jku import JKU_MAX_CACHE

__all__ = ["DEFAULT_ORIGIN", "DEFAULT_ROOT", "EPIC_BULK", "SandboxConfig", "SandboxFaults"]

DEFAULT_ORIGIN = "http://127.0.0.1:8765"
#: Epic's sandbox server root (docs/epic-notes.md §0); a production-style root such as "/FHIRProxy" works too.
DEFAULT_ROOT = "/interconnect-fhir-oauth"


#: The bulk knobs of :meth:`SandboxConfig.epic_bulk`.
EPIC_BULK: dict[str, Any] = {
    "export_seconds": 3 * 3600.0,
    "export_progress_headers": False,
    "export_since": "reject",
    "export_cooldown": 86400.0,
}


@dataclass(frozen=True)
class SandboxConfig:
    """Everything that shapes one :class:`~epic_fhir_async.sandbox.EpicSandbox` (all durations in seconds).

    ``page_size``/``max_page_size``: Epic pages at 1000 entries by default and at most (docs/epic-notes.md
    §3.5). ``session_ttl``: paging sessions expire this long after their last use (Epic's TTL is
    undocumented). ``unknown_params``: ``"ignore"`` (Epic's usual silence, docs/epic-notes.md §3.4) or
    ``"warn"`` (a 4122 outcome entry). ``outside_records``: clinical searchsets end with Epic's "Outside Record"
    59204 warnings (and Procedure's 59205), as on Epic's sandbox, whose clients lack those sub-types
    (docs/epic-notes.md §3.6). ``environment``: ``"non-production"`` (Epic's sandbox) or
    ``"production"``; client IDs registered for the other environment get ``invalid_client``
    (docs/epic-notes.md §1.1). ``token_audiences``: extra accepted assertion ``aud`` values (a customer's
    proxy allow-list, §1.4). ``jku_max_cache``: ceiling of the JKU key cache (29 h, §1.5). ``export_*``: the
    Bulk Data server's knobs (docs/sandbox.md "Bulk $export"; also settable on ``sb.bulk``). ``directory``:
    extra ``(name, FHIR base URL)`` entries for the endpoint directory at ``/Endpoints/R4``. The fault knobs
    seed :class:`SandboxFaults`, which stays mutable at runtime as ``sb.faults``.
    """

    seed: int = 0
    patients: int = 100
    token_lifetime: float = 3600.0
    page_size: int = EPIC_MAX_PAGE_SIZE
    max_page_size: int = EPIC_MAX_PAGE_SIZE
    session_ttl: float = 600.0
    export_seconds: float = 2.0
    export_cooldown: float = 0.0
    export_resources_per_file: int = 1000
    export_retention: float = 14 * 86400.0
    export_since: Literal["reject", "ignore"] = "reject"
    export_type_filter: bool = True
    export_allow_post: bool = False
    export_too_recent_status: int = 429
    export_progress_headers: bool = True
    export_synthetic_observations: int = 0
    origin: str = DEFAULT_ORIGIN
    root_path: str = DEFAULT_ROOT
    unknown_params: Literal["ignore", "warn"] = "ignore"
    outside_records: bool = True
    environment: Literal["non-production", "production"] = "non-production"
    token_audiences: tuple[str, ...] = ()
    jku_max_cache: float = JKU_MAX_CACHE
    directory: tuple[tuple[str, str], ...] = ()
    latency: float = 0.0
    error_rate: float = 0.0
    rate_limit_rps: float = 0.0
    drop_rate: float = 0.0
    token_flake_rate: float = 0.0
    retry_after: float = 1.0
    retry_after_http_date: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= self.max_page_size:
            raise ValueError("page_size must be between 1 and max_page_size")
        if self.patients < 0:
            raise ValueError("patients must be >= 0")
        if not self.root_path.startswith("/") or self.root_path.endswith("/"):
            raise ValueError("root_path must start with '/' and not end with '/'")
        if self.environment not in ("non-production", "production"):
            raise ValueError("environment must be 'non-production' or 'production'")
        if self.export_since not in ("reject", "ignore"):
            raise ValueError("export_since must be 'reject' or 'ignore'")
        if self.export_resources_per_file < 1:
            raise ValueError("export_resources_per_file must be at least 1")
        audiences: object = self.token_audiences  # typed as a tuple, but a lone string is an easy mistake
        if isinstance(audiences, str):
            raise TypeError("token_audiences must be a tuple of URLs, not one string")

    @classmethod
    def epic_bulk(cls, **fields: Any) -> SandboxConfig:
        """A config whose Bulk Data exports run as Epic's do (docs/epic-notes.md §4.2, §4.3); ``fields`` set
        the rest (or override these).

        Jobs take three hours of sandbox time (Epic's take minutes to days), status polls carry neither
        ``Retry-After`` nor ``X-Progress`` (unconfirmed at Epic, so a client must not need them), ``_since``
        is refused, and a client may kick off the same Group once a day. The defaults instead finish a job in
        2 s with both headers, for quick tests.
        """
        return cls(**{**EPIC_BULK, **fields})

    def faults(self) -> SandboxFaults:
        """The initial fault settings this config describes."""
        return SandboxFaults(
            latency=self.latency,
            error_rate=self.error_rate,
            rate_limit_rps=self.rate_limit_rps,
            drop_rate=self.drop_rate,
            token_flake_rate=self.token_flake_rate,
            retry_after=self.retry_after,
            retry_after_http_date=self.retry_after_http_date,
        )


@dataclass
class SandboxFaults:
    """Fault injection, mutable while the sandbox runs (no faults by default).

    ``latency``: seconds added to every FHIR and OAuth request. ``error_rate``: fraction of FHIR requests
    answered with one of ``error_statuses``. ``rate_limit_rps``: FHIR requests allowed per second on the
    sandbox clock (0 = unlimited), beyond which 429 + ``Retry-After`` (``retry_after`` seconds, or an HTTP-date
    when ``retry_after_http_date``). ``drop_rate``: fraction of FHIR responses whose connection is cut
    mid-body. ``token_flake_rate``: fraction of valid token requests answered with Epic's bare 400.
    ``latency_spike_rate``: fraction of FHIR requests delayed by ``latency_spike`` more seconds (a slow page).
    """

    latency: float = 0.0
    error_rate: float = 0.0
    rate_limit_rps: float = 0.0
    drop_rate: float = 0.0
    token_flake_rate: float = 0.0
    retry_after: float = 1.0
    retry_after_http_date: bool = False
    error_statuses: tuple[int, ...] = field(default=(500, 502, 503))
    latency_spike_rate: float = 0.0
    latency_spike: float = 0.0
