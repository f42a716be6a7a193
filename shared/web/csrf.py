"""Cross-site request forgery defences for every POST.

Same origin first (Fetch Metadata, then Origin or Referer against PUBLIC_BASE_URL), then, for form
posts, a signed token in the form that must belong to the signed-in user, as must the token in the
session cookie (itsdangerous, 8 hours). JSON posts are not form-encodable by another site, so their
origin check is enough.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

import azure.functions as func
from itsdangerous import BadData, URLSafeTimedSerializer
from werkzeug.http import dump_cookie, parse_cookie

from shared.web.responses import HttpError

CSRF_COOKIE: Final = "smtpguard_csrf"  # over http (the local host): browsers refuse __Host- there


CSRF_HOST_COOKIE: Final = "__Host-smtpguard_csrf"


CSRF_FIELD: Final = "csrf_token"


CSRF_LIFETIME_SECONDS: Final = 8 * 3600


MAX_CSRF_TOKEN: Final = 400


_CSRF_SALT: Final = "smtp-auth-guard/csrf"


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
