"""SMART discovery: where a FHIR server's token (and authorize) endpoints are.

Read ``[base]/.well-known/smart-configuration`` (JSON by default at Epic since Aug 2021); when that is missing
or unusable, fall back to the CapabilityStatement at ``[base]/metadata`` and its ``oauth-uris`` security
extension, asking for JSON explicitly (Epic answers XML otherwise, docs/epic-notes.md §2.1). The
``Epic-Client-ID`` header goes on both requests, because some customers return per-client endpoints. Token
URLs are never derived by editing the base URL.

A discovered token endpoint must be on the FHIR server's origin (Epic's is: docs/epic-notes.md §0, §2.1) or
on an origin the caller allowed: it receives the client secret or a signed assertion, and a hostile or
compromised discovery document must not be able to send them elsewhere. A ``token_url`` given explicitly is
the caller's choice and is not checked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .. import _json
from .._config import FHIR_JSON, MAX_RESOURCE_BYTES
from .._errors import ConfigurationError, UnsafeURLError
from .._http import HTTPSession
from .._urls import is_loopback, redact_url, same_origin

__all__ = [
    "OAUTH_URIS_EXTENSION",
    "SmartEndpoints",
    "absolute_url",
    "check_token_origins",
    "discover_endpoints",
    "get_json",
]

logger = logging.getLogger("epic_fhir_async.auth")

OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@dataclass(frozen=True)
class SmartEndpoints:
    """The OAuth endpoints of a FHIR server and where they were found (``"smart-configuration"`` or
    ``"metadata"``). ``configuration`` is the whole smart-configuration document when there was one."""

    token_endpoint: str
    authorization_endpoint: str | None
    source: str
    configuration: Mapping[str, Any] | None = None


def absolute_url(value: object, base: httpx.URL) -> str | None:
    """``value`` if it is an absolute http(s) URL that does not downgrade an https ``base``, else ``None``."""
    if not isinstance(value, str) or not value.strip():
        return None
    url = httpx.URL(value.strip())
    if url.scheme not in ("http", "https") or not url.host:
        return None
    if base.scheme == "https" and url.scheme != "https":
        return None  # never downgrade: an https FHIR server with an http token endpoint is a misconfiguration
    return str(url)


async def get_json(session: HTTPSession, url: str, headers: Mapping[str, str]) -> object | None:
    """GET a JSON document of the OAuth server (no bearer token); ``None`` unless it answers 200 with JSON."""
    # Bounded: a hostile server's endless metadata must not exhaust memory (SECURITY.md). One document, not a
    # page of resources: the resource limit (the sandbox's CapabilityStatement is ~50 KB, Epic's not much more).
    response = await session.send(
        "GET", url, headers=headers, limit=MAX_RESOURCE_BYTES, what="discovery request to"
    )
    if response.status_code != 200:
        logger.debug("discovery: %s answered %s", redact_url(url), response.status_code)
        return None
    try:
        doc: object = _json.loads(response.content)
    except ValueError:
        logger.debug("discovery: %s did not answer JSON", redact_url(url))
        return None
    return doc


def _from_capability_statement(doc: object, base: httpx.URL) -> tuple[str | None, str | None]:
    if not isinstance(doc, Mapping):
        return None, None
    for rest in doc.get("rest") or ():
        security = rest.get("security") if isinstance(rest, Mapping) else None
        if not isinstance(security, Mapping):
            continue
        for ext in security.get("extension") or ():
            if not isinstance(ext, Mapping) or ext.get("url") != OAUTH_URIS_EXTENSION:
                continue
            uris = {
                sub.get("url"): sub.get("valueUri")
                for sub in ext.get("extension") or ()
                if isinstance(sub, Mapping)
            }
            return absolute_url(uris.get("token"), base), absolute_url(uris.get("authorize"), base)
    return None, None


def check_token_origins(origins: Iterable[str] | str) -> tuple[httpx.URL, ...]:
    """The ``allowed_token_origins`` option as URLs: absolute, https unless loopback."""
    if isinstance(origins, str):
        origins = (origins,)
    checked = []
    for origin in origins:
        url = httpx.URL(str(origin)) if isinstance(origin, (str, httpx.URL)) else None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                f"allowed_token_origins: {origin!r} is not an absolute http(s) URL such as https://auth.example.org"
            )
        if url.scheme == "http" and not is_loopback(url.host):
            raise ConfigurationError(
                f"allowed_token_origins: refusing plain http:// for {redact_url(url)} (loopback is allowed)"
            )
        checked.append(url)
    return tuple(checked)


def _check_token_endpoint(token: str, base: httpx.URL, allowed: Iterable[httpx.URL], source: str) -> None:
    url = httpx.URL(token)
    if same_origin(url, base) or any(same_origin(url, origin) for origin in allowed):
        return
    raise UnsafeURLError(
        f"refusing the token endpoint {redact_url(url)} named by {source}: it is not on the FHIR server's origin "
        f"({redact_url(base)}) and would receive the client's credentials. If it is right, pass token_url= "
        "explicitly or allow its origin (allowed_token_origins=[...] on the auth method)"
    )


async def discover_endpoints(
    http: HTTPSession | httpx.AsyncClient,
    base_url: httpx.URL | str,
    *,
    client_id: str | None = None,
    allowed_token_origins: Iterable[str | httpx.URL] = (),
) -> SmartEndpoints:
    """Find the token endpoint of the FHIR server at ``base_url`` (smart-configuration, then metadata).

    Requests go through ``http`` (a client's session, or your ``httpx.AsyncClient``) without a bearer token.
    Raises :class:`ConfigurationError` when neither document names a token endpoint (pass ``token_url=``
    then), and :class:`UnsafeURLError` when the one named is neither on ``base_url``'s origin nor on one of
    ``allowed_token_origins``.
    """
    allowed = check_token_origins([str(o) for o in allowed_token_origins])
    base = httpx.URL(str(base_url).rstrip("/"))
    session = HTTPSession.of(http, base)
    extra = {"Epic-Client-ID": client_id} if client_id else {}
    config = await get_json(
        session, f"{base}/.well-known/smart-configuration", {"Accept": "application/json", **extra}
    )
    if isinstance(config, Mapping):
        token = absolute_url(config.get("token_endpoint"), base)
        if token is not None:
            _check_token_endpoint(token, base, allowed, "the SMART configuration")
            logger.debug("discovered token endpoint %s from smart-configuration", redact_url(token))
            return SmartEndpoints(
                token_endpoint=token,
                authorization_endpoint=absolute_url(config.get("authorization_endpoint"), base),
                source="smart-configuration",
                configuration=dict(config),
            )
    metadata = await get_json(session, f"{base}/metadata", {"Accept": FHIR_JSON, **extra})
    token, authorize = _from_capability_statement(metadata, base)
    if token is not None:
        _check_token_endpoint(token, base, allowed, "the CapabilityStatement")
        logger.debug("discovered token endpoint %s from the CapabilityStatement", redact_url(token))
        return SmartEndpoints(token_endpoint=token, authorization_endpoint=authorize, source="metadata")
    raise ConfigurationError(
        f"could not discover the token endpoint of {redact_url(base)}: neither "
        "/.well-known/smart-configuration nor /metadata names one; pass token_url= explicitly"
    )
