"""HTTP plumbing for the workflow endpoints: body limits, parsing, CSRF, rendering, security headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from functools import cache
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from werkzeug.http import parse_cookie

from shared.errors import GuardError

MAX_BODY_BYTES: Final = 16 * 1024
MAX_FORM_FIELDS: Final = 40
CSRF_COOKIE: Final = "smtpguard_csrf"
CSRF_FIELD: Final = "csrf_token"
_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
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
        loader=PackageLoader("shared", "templates"),
        # HTML pages and mail are escaped; the plain-text mail part and the subject are not HTML.
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


def wants_json(req: func.HttpRequest) -> bool:
    accept = req.headers.get("accept", "")
    return ("application/json" in accept and "text/html" not in accept) or is_json_body(req)


def is_json_body(req: func.HttpRequest) -> bool:
    return req.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def body(req: func.HttpRequest) -> bytes:
    declared = req.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HttpError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    data = req.get_body() or b""
    if len(data) > MAX_BODY_BYTES:
        raise HttpError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    return data


def read_input(req: func.HttpRequest) -> dict[str, str]:
    """A JSON object or an urlencoded form, as field → string. 400 for anything else."""
    data = body(req)
    content_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            parsed = json.loads(data or b"null")
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the body is not valid JSON", {"body": "not valid JSON"}) from None
        if not isinstance(parsed, dict):
            raise HttpError(400, "the body must be a JSON object", {"body": "must be a JSON object"})
        fields: dict[str, str] = {}
        for key, value in parsed.items():
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise HttpError(400, f"{key} must be a string or a number", {str(key): "must be a string or a number"})
            fields[str(key)] = str(value)
        return fields
    if content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(
                data.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(data), max_num_fields=MAX_FORM_FIELDS
            )
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the form body is malformed", {"body": "malformed form data"}) from None
        return dict(pairs)
    raise HttpError(415, "send application/json or application/x-www-form-urlencoded")


# -- CSRF: double-submit cookie, plus an Origin check where the browser sends one -------------------------


def csrf_cookie_value(req: func.HttpRequest) -> str | None:
    # werkzeug skips a malformed cookie and keeps the rest; http.cookies drops the whole header for
    # one (say a parent domain's JSON-valued consent cookie), which would fail every form post.
    value = parse_cookie(req.headers.get("cookie") or "").get(CSRF_COOKIE, "")
    return value if 20 <= len(value) <= 100 else None


def csrf_token(req: func.HttpRequest, public_base_url: str) -> tuple[str, dict[str, str]]:
    """The token to embed in a form, and the Set-Cookie header when a new one was made."""
    existing = csrf_cookie_value(req)
    if existing:
        return existing, {}
    token = secrets.token_urlsafe(32)
    secure = "; Secure" if public_base_url.startswith("https://") else ""
    return token, {"Set-Cookie": f"{CSRF_COOKIE}={token}; Path=/api; HttpOnly; SameSite=Strict{secure}"}


def check_csrf(req: func.HttpRequest, fields: Mapping[str, str], public_base_url: str) -> None:
    """Form posts only: JSON bodies cannot be sent cross-site without a CORS preflight we never allow."""
    origin = req.headers.get("origin")
    if origin and origin != "null" and _origin(origin) != _origin(public_base_url):
        raise HttpError(403, "cross-site form posts are refused")
    cookie = csrf_cookie_value(req)
    sent = fields.get(CSRF_FIELD, "")
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise HttpError(403, "the form's CSRF token is missing or does not match: reload the page and try again")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()
