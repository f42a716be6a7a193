"""HTTP plumbing for the workflow endpoints: body limits, parsing, CSRF, rendering, security headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from functools import cache
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from itsdangerous import BadData, URLSafeTimedSerializer
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from werkzeug.http import dump_cookie, parse_cookie

from shared.errors import GuardError

MAX_BODY_BYTES: Final = 16 * 1024
MAX_FORM_FIELDS: Final = 40
# Our bodies are flat objects; json.loads recurses once per level and a few thousand `[` under the
# size limit would raise RecursionError.
MAX_JSON_DEPTH: Final = 32
CSRF_COOKIE: Final = "smtpguard_csrf"  # over http (the local host): browsers refuse __Host- there
CSRF_HOST_COOKIE: Final = "__Host-smtpguard_csrf"
CSRF_FIELD: Final = "csrf_token"
CSRF_LIFETIME_SECONDS: Final = 8 * 3600
MAX_CSRF_TOKEN: Final = 400
_CSRF_SALT: Final = "smtp-auth-guard/csrf"
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


def _nested_deeper_than(data: bytes, limit: int) -> bool:
    """Whether JSON text opens more than `limit` arrays or objects at once (brackets in strings skipped)."""
    if data.count(b"[") + data.count(b"{") <= limit:  # the usual case costs two C scans
        return False
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def read_input(req: func.HttpRequest) -> dict[str, str]:
    """A JSON object or an urlencoded form, as field → string. 400 for anything else."""
    data = body(req)
    content_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        if _nested_deeper_than(data, MAX_JSON_DEPTH):
            raise HttpError(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels", {"body": "nested too deeply"})
        try:
            parsed = json.loads(data or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError):
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


# -- CSRF (OWASP's cheat sheet): Fetch Metadata or Origin first, then a signed token bound to the user ----


def _cookie_name(public_base_url: str) -> str:
    # __Host- makes the browser refuse the cookie unless it is Secure, host-only and Path=/, so a
    # sibling subdomain cannot plant one; browsers accept the prefix only over https.
    return CSRF_HOST_COOKIE if public_base_url.startswith("https://") else CSRF_COOKIE


def _signer(secret: bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=_CSRF_SALT)


def _token_owner(secret: bytes, token: str) -> tuple[str, float] | None:
    """Whose session a token belongs to, and its age in seconds; None when forged or expired."""
    try:
        data, signed_at = _signer(secret).loads(token, max_age=CSRF_LIFETIME_SECONDS, return_timestamp=True)
    except BadData:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("sub"), str):
        return None
    return data["sub"], time.time() - signed_at.timestamp()


def csrf_cookie_value(req: func.HttpRequest, public_base_url: str) -> str | None:
    # werkzeug skips a malformed cookie and keeps the rest; http.cookies drops the whole header for
    # one (say a parent domain's JSON-valued consent cookie), which would fail every form post.
    value = parse_cookie(req.headers.get("cookie") or "").get(_cookie_name(public_base_url), "")
    return value if 20 <= len(value) <= MAX_CSRF_TOKEN else None


def csrf_token(
    req: func.HttpRequest, public_base_url: str, secret: bytes, object_id: str
) -> tuple[str, dict[str, str]]:
    """The token to embed in a form, and the Set-Cookie header when a new one was made.

    An HMAC (itsdangerous) over the signed-in user's object id, a nonce and the time, keyed with the
    install's secret: a planted cookie, or another user's token, never verifies. A valid one in the
    cookie is kept until half its life is gone, so that two open tabs share it.
    """
    existing = csrf_cookie_value(req, public_base_url)
    if existing:
        owner = _token_owner(secret, existing)
        if owner is not None and owner[0] == object_id and owner[1] < CSRF_LIFETIME_SECONDS / 2:
            return existing, {}
    token = _signer(secret).dumps({"sub": object_id, "n": secrets.token_urlsafe(12)})
    https = public_base_url.startswith("https://")
    cookie = dump_cookie(
        _cookie_name(public_base_url),
        token,
        max_age=CSRF_LIFETIME_SECONDS,
        path="/" if https else "/api",
        secure=https,
        httponly=True,
        samesite="Strict",
    )
    return token, {"Set-Cookie": cookie}


def check_same_origin(req: func.HttpRequest, public_base_url: str) -> None:
    """Every POST: a browser must say it comes from this origin; a sibling origin is only same-site.

    Fetch Metadata when the browser sends it; else Origin, else Referer, against PUBLIC_BASE_URL.
    `Origin: null` (sent after a cross-site redirect, among others) is refused. A caller that sends
    none of them is not a browser (an API client); form posts still need the token below.
    """
    site = req.headers.get("sec-fetch-site")
    if site is not None:
        if site.strip().lower() != "same-origin":
            raise HttpError(403, "cross-site posts are refused")
        return
    claimed = req.headers.get("origin") or req.headers.get("referer")
    if claimed is not None and _origin(claimed) != _origin(public_base_url):
        raise HttpError(403, "cross-site posts are refused")


def check_csrf(
    req: func.HttpRequest, fields: Mapping[str, str], public_base_url: str, secret: bytes, object_id: str
) -> None:
    """Form posts: same origin, and both the form's token and the cookie's are this user's and unexpired.

    Both, not equal: a tab opened after a cross-site navigation (a link in Outlook) gets a new cookie,
    and the forms of tabs opened before must still post.
    """
    check_same_origin(req, public_base_url)
    if req.headers.get("sec-fetch-site") is None and not (req.headers.get("origin") or req.headers.get("referer")):
        raise HttpError(403, "a form post must say where it comes from (Origin): reload the page and try again")
    cookie = csrf_cookie_value(req, public_base_url)
    sent = fields.get(CSRF_FIELD, "")
    if not cookie or not sent or not all(_owned_by(secret, token, object_id) for token in (cookie, sent)):
        raise HttpError(403, "the form's CSRF token is missing or does not match: reload the page and try again")


def _owned_by(secret: bytes, token: str, object_id: str) -> bool:
    owner = _token_owner(secret, token)
    return owner is not None and hmac.compare_digest(owner[0].encode(), object_id.encode())


def _origin(url: str) -> str:
    if url.strip().lower() == "null":
        return "null"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()
