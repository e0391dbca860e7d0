"""HTML pages of the sandbox's authorize endpoint: the authorize error page and the test login page.

docs/epic-notes.md §2.2: Epic answers a bad authorize request with an HTML page ("Something went wrong trying
to authorize the client. Please try logging in again."), never with an error redirect, so an app cannot be
sent to an unregistered redirect URI. The page also names the short reason (``redirect_uri_mismatch`` ...) so
tests and developers can see which rule failed; it never echoes request values.
"""

from __future__ import annotations

from html import escape

from ._http import Response

__all__ = ["LOGIN_FIELDS", "error_page", "login_page"]

_HTML = "text/html; charset=utf-8"
#: The login form's field names (tests post them): hidden ``session``, ``username``, ``password``, and the
#: submit button ``action`` = ``login`` or ``deny``.
LOGIN_FIELDS = ("session", "username", "password", "action")


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8"/>\n'
        f"<title>{escape(title)}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def error_page(reason: str, status: int = 400) -> Response:
    """Epic's authorize failure page; ``reason`` is one of the sandbox's short codes."""
    body = (
        '<div id="content">\n<h1>Error</h1>\n'
        "<p>Something went wrong trying to authorize the client. Please try logging in again.</p>\n"
        f'<p>Error code: <code id="error-code">{escape(reason)}</code></p>\n</div>'
    )
    return Response(
        status, [("content-type", _HTML), ("cache-control", "no-store")], _page("Error", body).encode()
    )


def login_page(*, action: str, session: str, client_id: str, error: str | None = None) -> Response:
    """The test login page (``sb.smart.auto_login = False``): a form POSTed to ``action``.

    Accepts Epic's public sandbox logins (provider ``FHIR``/``FHIRTWO`` with ``EpicFhir11!``, MyChart
    ``fhircamila``/``fhirderrick``/``fhirdesiree`` with ``epicepic1``); the Deny button refuses access.
    """
    problem = f'<p id="login-error">{escape(error)}</p>\n' if error else ""
    body = (
        f"<h1>Log in to authorize {escape(client_id)}</h1>\n{problem}"
        f'<form id="login" method="post" action="{escape(action)}">\n'
        f'<input type="hidden" name="session" value="{escape(session)}"/>\n'
        '<label>User ID <input type="text" name="username" autocomplete="username"/></label>\n'
        '<label>Password <input type="password" name="password" autocomplete="current-password"/></label>\n'
        '<button type="submit" name="action" value="login">Log In</button>\n'
        '<button type="submit" name="action" value="deny">Deny</button>\n</form>'
    )
    return Response(
        200, [("content-type", _HTML), ("cache-control", "no-store")], _page("Login", body).encode()
    )
