"""App Service Authentication ("Easy Auth") with Entra ID, played locally for `devservices.localhost`.

What the platform does in front of the app, and only that: it strips client-sent principal headers,
signs users in (here: pick a user from a list, no password, no tokens), keeps a session cookie, and
injects the `X-MS-CLIENT-PRINCIPAL*` headers into each request that has a session. Requests without
a session get a 302 to the sign-in page (browsers) or a 401 (APIs), except on anonymous paths.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import os
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

log = logging.getLogger(__name__)

SESSION_COOKIE: Final = "AppServiceAuthSession"
PROVIDER: Final = "aad"
LOGIN_PATH: Final = "/.auth/login/aad"
SESSION_TTL_SECONDS: Final = 8 * 3600  # App Service's default session lifetime
# Header prefixes the platform owns: a client can never set them.
RESERVED_HEADER_PREFIXES: Final = ("x-ms-client-principal", "x-ms-token-")
CLAIM_OID: Final = "http://schemas.microsoft.com/identity/claims/objectidentifier"
CLAIM_TID: Final = "http://schemas.microsoft.com/identity/claims/tenantid"
# The sign-in page's one script keeps the URL fragment (an approval link's code) through sign-in, as
# App Service does with `preserveUrlFragmentsForLogins`: a form post would drop it. The page may only
# post to itself, and CSP allows that script by hash.
KEEP_FRAGMENT_SCRIPT: Final = 'document.getElementById("sign-in").action += location.hash;'
PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; script-src 'sha256-"
    + base64.b64encode(hashlib.sha256(KEEP_FRAGMENT_SCRIPT.encode()).digest()).decode()
    + "'",
    "X-Content-Type-Options": "nosniff",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class UsersError(RuntimeError):
    """The user list could not be loaded."""


@dataclass(frozen=True, slots=True)
class EasyAuthUser:
    """A user signed in to Easy Auth, as the platform describes them to the app in its headers.

    Named apart from the app's own `shared.model.principal.Principal`, which the app reads back from
    these headers: this is the platform's side of that exchange.
    """

    oid: str
    upn: str
    name: str
    tid: str | None = None

    @classmethod
    def from_directory(cls, user: Mapping[str, Any], tenant_id: str | None = None) -> EasyAuthUser:
        """A directory user (`{"id","userPrincipalName","displayName"[,"tenantId"]}`), signed in."""
        upn = str(user["userPrincipalName"])
        return cls(
            oid=str(user["id"]),
            upn=upn,
            name=str(user.get("displayName") or upn),
            tid=str(user.get("tenantId") or tenant_id or "") or None,
        )

    def claims(self) -> list[dict[str, str]]:
        claims = [
            {"typ": CLAIM_OID, "val": self.oid},
            {"typ": "preferred_username", "val": self.upn},
            {"typ": "name", "val": self.name},
        ]
        if self.tid:
            claims.append({"typ": CLAIM_TID, "val": self.tid})
        return claims

    def headers(self) -> dict[str, str]:
        """The request headers App Service injects for this user."""
        document = {
            "auth_typ": PROVIDER,
            "claims": self.claims(),
            "name_typ": "preferred_username",
            "role_typ": "roles",
        }
        encoded = base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode("ascii")
        return {
            "X-MS-CLIENT-PRINCIPAL": encoded,
            "X-MS-CLIENT-PRINCIPAL-ID": self.oid,
            "X-MS-CLIENT-PRINCIPAL-NAME": self.upn,
            "X-MS-CLIENT-PRINCIPAL-IDP": PROVIDER,
        }

    def me(self) -> list[dict[str, Any]]:
        """The body of `GET /.auth/me` (without tokens: this host has none)."""
        return [{"provider_name": PROVIDER, "user_id": self.upn, "user_claims": self.claims()}]


def is_reserved_header(name: str) -> bool:
    return name.lower().startswith(RESERVED_HEADER_PREFIXES)


def safe_redirect(uri: str | None) -> str | None:
    """`uri` if it is a same-origin relative path ("/..."), else None: never an open redirect."""
    if not uri or not uri.startswith("/") or uri.startswith("//") or "\\" in uri:
        return None
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in uri):
        return None
    parts = urlsplit(uri)
    if parts.scheme or parts.netloc:
        return None
    return uri


def path_segments(raw_path: str) -> list[str]:
    """Percent-decoded path segments of a raw path; an encoded "/" stays inside its segment."""
    return [unquote(segment) for segment in raw_path.split("/")]


def _normalise(path: str) -> tuple[str, ...]:
    segments = [segment.lower() for segment in path_segments(path)]
    while len(segments) > 1 and segments[-1] == "":
        segments.pop()
    return tuple(segments)


class SessionStore:
    """Server-side sessions: random token -> signed-in user, with App Service's default lifetime."""

    def __init__(self, ttl_seconds: float = SESSION_TTL_SECONDS) -> None:
        self._ttl = ttl_seconds
        self._sessions: dict[str, tuple[EasyAuthUser, float]] = {}

    def create(self, user: EasyAuthUser) -> str:
        token = secrets.token_urlsafe(32)
        self._sessions[token] = (user, time.monotonic() + self._ttl)
        return token

    def get(self, token: str | None) -> EasyAuthUser | None:
        if not token:
            return None
        entry = self._sessions.get(token)
        if entry is None:
            return None
        user, expires = entry
        if time.monotonic() >= expires:
            del self._sessions[token]
            return None
        return user

    def delete(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)


def _ssl_context() -> ssl.SSLContext:
    # The tenant emulator's CA comes in SSL_CERT_FILE, as for the app itself.
    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)


def _validate_users(data: Any) -> list[dict[str, Any]]:
    items = data.get("value") if isinstance(data, dict) else data  # also accept a Graph-style {"value": [...]}
    if not isinstance(items, list):
        raise UsersError("the user list is not a JSON list")
    users = []
    for item in items:
        if not isinstance(item, dict) or not item.get("id") or not item.get("userPrincipalName"):
            raise UsersError("every user needs an id and a userPrincipalName")
        users.append(item)
    return users


class EasyAuth:
    """Easy Auth's middleware and `/.auth/*` routes for one aiohttp application."""

    def __init__(
        self,
        *,
        users: Sequence[Mapping[str, Any]] | None = None,
        users_url: str | None = None,
        anonymous: Iterable[str] = ("/api/health",),
        tenant_id: str | None = None,
        exempt_prefixes: Iterable[str] = ("/.auth/", "/admin/"),
    ) -> None:
        self._users = _validate_users(list(users)) if users is not None else None
        self._users_url = users_url
        self._tenant_id = tenant_id
        self._exact: set[tuple[str, ...]] = set()
        self._prefixes: list[tuple[str, ...]] = []
        for path in anonymous:
            if path.endswith("/*"):
                self._prefixes.append(_normalise(path[:-2]))
            else:
                self._exact.add(_normalise(path))
        self._exempt = tuple(_normalise(prefix.rstrip("/")) for prefix in exempt_prefixes)
        self.sessions = SessionStore()

    # --- users -------------------------------------------------------------------------------------

    async def users(self) -> list[dict[str, Any]]:
        """The users one can sign in as: the list given, else fetched from the users URL each time."""
        if self._users is not None:
            return self._users
        if not self._users_url:
            return []
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=_ssl_context())) as client,
                client.get(self._users_url) as response,
            ):
                response.raise_for_status()
                return _validate_users(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise UsersError(f"could not load users from {self._users_url}: {err}") from err

    async def user_for(self, user_id: str) -> EasyAuthUser:
        for user in await self.users():
            if str(user["id"]) == user_id:
                return EasyAuthUser.from_directory(user, self._tenant_id or os.environ.get("AZURE_TENANT_ID"))
        raise KeyError(user_id)

    async def create_session(self, user_id: str) -> str:
        """A session for a known user, as after signing in; returns the cookie value."""
        return self.sessions.create(await self.user_for(user_id))

    # --- middleware --------------------------------------------------------------------------------

    def is_anonymous(self, raw_path: str) -> bool:
        path = _normalise(raw_path)
        return path in self._exact or any(path[: len(prefix)] == prefix for prefix in self._prefixes)

    def _is_exempt(self, raw_path: str) -> bool:
        path = _normalise(raw_path)
        return any(path[: len(prefix)] == prefix for prefix in self._exempt)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = CIMultiDict((name, value) for name, value in request.headers.items() if not is_reserved_header(name))
        raw_path = request.rel_url.raw_path
        if not self._is_exempt(raw_path):
            signed_in = self.sessions.get(request.cookies.get(SESSION_COOKIE))
            if signed_in is not None:
                headers.update(signed_in.headers())
            elif not self.is_anonymous(raw_path):
                return self._challenge(request)
        return await handler(request.clone(headers=headers))

    @staticmethod
    def _challenge(request: web.Request) -> web.StreamResponse:
        browser = request.method in ("GET", "HEAD") and "text/html" in request.headers.get("Accept", "").lower()
        if browser:
            target = quote(request.rel_url.raw_path_qs, safe="")
            return _redirect(f"{LOGIN_PATH}?post_login_redirect_uri={target}")
        return web.json_response({"error": "unauthenticated"}, status=401)

    # --- /.auth routes -----------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(LOGIN_PATH, self.login_page),
            web.post(LOGIN_PATH, self.login),
            web.get("/.auth/me", self.me),
            web.get("/.auth/logout", self.logout),
        ]

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        redirect = request.query.get("post_login_redirect_uri") or "/"
        if safe_redirect(redirect) is None:
            return _page("Sign-in refused", "<p>The redirect address must be a path on this site.</p>", status=400)
        try:
            users = await self.users()
        except UsersError as err:
            log.warning("%s", err)
            return _page("Sign-in unavailable", "<p>The user list could not be loaded.</p>", status=502)
        return _page("Sign in", _login_form(users, redirect))

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not _same_origin(request):
            return _page("Sign-in refused", "<p>Cross-site sign-in is not allowed.</p>", status=403)
        form = await request.post()
        user_id = str(form.get("user_id") or "")
        redirect = safe_redirect(str(form.get("post_login_redirect_uri") or "/"))
        if redirect is None:
            return _page("Sign-in refused", "<p>The redirect address must be a path on this site.</p>", status=400)
        try:
            signed_in = await self.user_for(user_id)
        except KeyError:
            return _page("Sign-in refused", "<p>Unknown user.</p>", status=400)
        except UsersError as err:
            log.warning("%s", err)
            return _page("Sign-in unavailable", "<p>The user list could not be loaded.</p>", status=502)
        self.sessions.delete(request.cookies.get(SESSION_COOKIE))  # a fresh token on every sign-in
        response = _redirect(redirect)
        response.set_cookie(SESSION_COOKIE, self.sessions.create(signed_in), httponly=True, samesite="Lax", path="/")
        return response

    async def me(self, request: web.Request) -> web.StreamResponse:
        signed_in = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if signed_in is None:
            return web.json_response({"error": "unauthenticated"}, status=401)
        return web.json_response(signed_in.me(), headers={"Cache-Control": "no-store"})

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.delete(request.cookies.get(SESSION_COOKIE))
        redirect = safe_redirect(request.query.get("post_logout_redirect_uri"))
        response: web.StreamResponse = (
            _redirect(redirect) if redirect else _page("Signed out", "<p>You have signed out.</p>")
        )
        response.del_cookie(SESSION_COOKIE, path="/")
        return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or origin.lower() == f"{request.scheme}://{request.host}".lower()


def _login_form(users: Sequence[Mapping[str, Any]], redirect: str) -> str:
    if not users:
        return "<p>No users are configured: start the host with <code>--users-url</code>.</p>"
    options = "\n".join(
        f'<option value="{html.escape(str(user["id"]))}">'
        f"{html.escape(str(user.get('displayName') or user['userPrincipalName']))} "
        f"({html.escape(str(user['userPrincipalName']))})</option>"
        for user in users
    )
    return (
        "<p>Local sign-in for development: no password, no tokens.</p>\n"
        f'<form id="sign-in" method="post" action="{LOGIN_PATH}">\n'
        f'<input type="hidden" name="post_login_redirect_uri" value="{html.escape(redirect)}">\n'
        '<p><label for="user_id">Sign in as</label>\n'
        f'<select id="user_id" name="user_id" required>\n{options}\n</select></p>\n'
        '<p><button type="submit">Sign in</button></p>\n'
        "</form>\n"
        f"<script>{KEEP_FRAGMENT_SCRIPT}</script>"
    )


def _page(title: str, body: str, status: int = 200) -> web.Response:
    document = (
        '<!doctype html>\n<html lang="en">\n<head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head>\n"
        f"<body><main>\n<h1>{html.escape(title)}</h1>\n{body}\n</main></body>\n</html>\n"
    )
    return web.Response(text=document, status=status, content_type="text/html", headers=PAGE_HEADERS)
