"""What the HTTP handlers answer with: rendered pages, JSON, redirects, refusals, and their security headers."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from functools import cache
from typing import Any, Final

import azure.functions as func
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from shared.errors import GuardError

_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


SECURITY_HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on its own form posts.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


class HttpError(GuardError):
    """An answer other than success, with field messages when the input was at fault."""

    def __init__(
        self, status: int, message: str, errors: Mapping[str, str] | None = None, retry_after: int | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.errors = dict(errors or {})
        self.retry_after = retry_after  # seconds, sent as Retry-After
        super().__init__(message)


@cache
def templates() -> Environment:
    return Environment(
        loader=PackageLoader("shared.web", "templates"),
        # HTML pages are escaped; the script a page carries is not HTML.
        autoescape=select_autoescape(enabled_extensions=("html",), disabled_extensions=("txt", "js"), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_text(name: str, **context: Any) -> str:
    return templates().get_template(name).render(**context)


def _script_policy(script: str) -> dict[str, str]:
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return {"Content-Security-Policy": f"{_CSP}; script-src 'sha256-{digest}'"}


# The approval page's one script, which reads the link's code from the URL fragment; CSP allows it by hash.
LINK_CODE_HEADERS: Final = _script_policy(render_text("link_code.js"))


def html(name: str, status: int = 200, headers: Mapping[str, str] | None = None, **context: Any) -> func.HttpResponse:
    return func.HttpResponse(
        render_text(name, **context),
        status_code=status,
        mimetype="text/html",
        charset="utf-8",
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(data, default=str),
        status_code=status,
        mimetype="application/json",
        charset="utf-8",
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


def redirect(location: str, status: int = 303) -> func.HttpResponse:
    return func.HttpResponse(status_code=status, headers={**SECURITY_HEADERS, "Location": location})
