"""Constants and defaults in one place (seconds for every duration)."""

from __future__ import annotations

from typing import Final

from ._version import __version__

#: Epic's public sandbox (see docs/epic-notes.md §0).
EPIC_SANDBOX_ROOT: Final = "https://fhir.epic.com/interconnect-fhir-oauth"
EPIC_SANDBOX_BASE_URL: Final = f"{EPIC_SANDBOX_ROOT}/api/FHIR/R4"
EPIC_SANDBOX_TOKEN_URL: Final = f"{EPIC_SANDBOX_ROOT}/oauth2/token"
EPIC_SANDBOX_BULK_GROUP_ID: Final = "e3iabhmS8rsueyz7vaimuiaSmfGvi.QwjVXJANlPOgR83"

#: Path layout the emulator reproduces, relative to the server root.
FHIR_R4_PATH: Final = "/interconnect-fhir-oauth/api/FHIR/R4"
OAUTH_PATH: Final = "/interconnect-fhir-oauth/oauth2"

#: Epic answers XML unless asked for JSON (docs/epic-notes.md §3.1), so every request says so.
FHIR_JSON: Final = "application/fhir+json"
JSON_CONTENT_TYPES: Final = ("application/fhir+json", "application/json", "application/json+fhir")
FORM_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"

USER_AGENT: Final = f"epic-fhir-async/{__version__}"

#: Epic's OperationOutcome code system (sandbox arc; customers use their own arc ending in the same suffix).
EPIC_OUTCOME_SYSTEM: Final = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"
EPIC_OUTCOME_SYSTEM_SUFFIX: Final = ".7.2.657369"

JWT_BEARER_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

#: The deadline of one attempt of one request (connect, send, response head and, for bodies read whole, the
#: body), in seconds; httpx's per-operation timeouts use it too. Epic pages of 1000 entries are ~2 MB and can
#: take seconds to render (docs/epic-notes.md §3.5).
DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
#: A streamed body (bulk files, ``client.stream``) must deliver at least this many bytes per second, measured
#: over windows of the client's ``timeout``: a server trickling a byte a second cannot hold a download forever.
MIN_STREAM_BYTES_PER_SECOND: Final = 1024

#: Response size limits (SECURITY.md): a hostile or broken server must not make the SDK exhaust memory, and
#: parsing JSON costs up to ~25x its size in memory for a body built for it (``[],[],...``), ~5x for FHIR.
#: Search pages (and raw bytes: binaries, ``client.request``): a 1000-entry Epic page is ~2.3 MB
#: (docs/epic-notes.md §3.5), so 64 MiB is generous. Other JSON bodies (a read, an operation, the
#: CapabilityStatement, bulk status and manifests, discovery) hold one resource: 16 MiB. Error bodies are read
#: up to 1 MiB, the rest dropped (the typed error keeps its status). Bulk files are streamed (no total
#: limit), only one NDJSON line is ever held whole; token responses are ~1-2 KB.
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
MAX_RESOURCE_BYTES: Final = 16 * 1024 * 1024
MAX_ERROR_BODY_BYTES: Final = 1024 * 1024
MAX_NDJSON_LINE_BYTES: Final = 64 * 1024 * 1024
MAX_TOKEN_RESPONSE_BYTES: Final = 1024 * 1024

#: Pages one search may fetch before it stops with PagingError (a server whose next link never repeats but
#: never ends). 10,000 pages of Epic's 1000 entries are ten million resources.
MAX_PAGES: Final = 10_000

#: Epic's default and maximum page size (docs/epic-notes.md §3.5).
EPIC_MAX_PAGE_SIZE: Final = 1000

#: Logger name used by every module of the library.
LOGGER_NAME: Final = "epic_fhir_async"
