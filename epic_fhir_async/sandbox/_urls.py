"""The sandbox's absolute URLs, laid out as Epic's (docs/epic-notes.md §0, §2.1, §2.5).

Everything hangs below one origin and root path (``/interconnect-fhir-oauth`` in Epic's sandbox, a
customer's own path in production): ``<root>/api/FHIR/R4`` for FHIR, ``<root>/oauth2/...`` for OAuth and
OpenID Connect, and the OIDC key set at Epic's ``<root>/api/epic/2019/Security/Open/PublicKeys/...`` path.
The origin is mutable: ``serve()`` moves it to the real port, and every part that builds a URL reads it here.
"""

from __future__ import annotations

from ._idtoken import OIDC_KEYS_PATH

__all__ = ["FHIR_PATH", "SandboxUrls"]

#: The FHIR R4 base below the root path.
FHIR_PATH = "/api/FHIR/R4"


class SandboxUrls:
    """The absolute URLs of one sandbox, derived from :attr:`origin` and :attr:`root_path` on every read."""

    def __init__(self, origin: str, root_path: str) -> None:
        self.origin = origin.rstrip("/")
        self.root_path = root_path

    @property
    def fhir_base(self) -> str:
        return f"{self.origin}{self.root_path}{FHIR_PATH}"

    @property
    def oauth(self) -> str:
        return f"{self.origin}{self.root_path}/oauth2"

    @property
    def token(self) -> str:
        return f"{self.oauth}/token"

    @property
    def authorize(self) -> str:
        return f"{self.oauth}/authorize"

    @property
    def openid_configuration(self) -> str:
        return f"{self.oauth}/.well-known/openid-configuration"

    @property
    def jwks(self) -> str:
        return f"{self.origin}{self.root_path}{OIDC_KEYS_PATH}"
