"""Entra ID token endpoint (client credentials) and the bearer-token check the resource routes share."""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web

from .tenant import Tenant

# Per-process signing key: tokens from an earlier emulator run never validate against a new one.
_SIGNING_KEY = secrets.token_bytes(32)
TOKEN_LIFETIME = 3599
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})

# App roles a client-credentials token carries for each emulated resource.
RESOURCE_ROLES: dict[str, list[str]] = {
    "exchange": ["Exchange.ManageAsApp"],
    "graph": ["User.Read.All", "GroupMember.Read.All", "Mail.Send", "Policy.Read.All", "AuditLog.Read.All"],
}


def local_port(request: web.Request) -> int | None:
    """The port the server really listens on (the Host header can say anything)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if sockname else request.url.port


def resource_of(url: str, port: int | None) -> str | None:
    """'https://127.0.0.1:PORT/exchange' -> 'exchange', if it names one of this server's services."""
    try:
        from yarl import URL

        u = URL(url)
    except ValueError:
        return None
    if u.scheme != "https" or (u.host or "") not in LOOPBACK_HOSTS or u.port != port:
        return None
    name = u.path.strip("/")
    return name if name in RESOURCE_ROLES else None


def _aad_error(status: int, error: str, code: int, text: str) -> web.Response:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    trace = str(uuid.uuid4())
    corr = str(uuid.uuid4())
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {corr} Timestamp: {now}",
        "error_codes": [code],
        "timestamp": now,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    return web.json_response(body, status=status)


def issue_token(tenant: Tenant, client_id: str, audience: str, resource: str, base_url: str) -> str:
    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": f"{base_url}/{tenant.tenant_id}/v2.0",
        "tid": tenant.tenant_id,
        "oid": tenant.clients[client_id].object_id,
        "sub": tenant.clients[client_id].object_id,
        "appid": client_id,
        "azp": client_id,
        "idtyp": "app",
        "roles": tenant.app_roles.get(resource, RESOURCE_ROLES[resource]),
        "iat": now,
        "nbf": now,
        "exp": now + TOKEN_LIFETIME,
        "uti": secrets.token_urlsafe(16),
        "ver": "2.0",
    }
    return jwt.encode(claims, _SIGNING_KEY, algorithm="HS256")


class _Refused(Exception):
    """A token request Entra ID would refuse: becomes its AADSTS error response."""

    def __init__(self, status: int, error: str, code: int, text: str) -> None:
        super().__init__(text)
        self.status, self.error, self.code, self.text = status, error, code, text

    def response(self) -> web.Response:
        return _aad_error(self.status, self.error, self.code, self.text)


def _check_tenant(tenant: Tenant, tid: str) -> None:
    if tid.lower() not in {tenant.tenant_id.lower(), tenant.domain.lower()}:
        raise _Refused(
            400,
            "invalid_request",
            90002,
            f"Tenant '{tid}' not found. Check to make sure you have the correct tenant ID and are signing "
            "into the correct cloud.",
        )


def _check_client(tenant: Tenant, grant: str, client_id: str, secret: str) -> None:
    """Client credentials only, from a registered app with its secret."""
    if grant != "client_credentials":
        raise _Refused(400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant}'.")
    client = tenant.clients.get(client_id)
    if client is None:
        raise _Refused(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory '{tenant.tenant_id}'.",
        )
    if not secrets.compare_digest(secret.encode(), client.secret.encode()):
        raise _Refused(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client "
            f"secret value, not the client secret ID, for a secret added to app '{client_id}'.",
        )


def _audience_and_resource(tenant: Tenant, scope: str, port: int | None) -> tuple[str, str]:
    """`{resource URI}/.default` -> (the resource URI, the name of the emulated resource)."""
    scopes = scope.split()
    if len(scopes) != 1 or not scopes[0].endswith("/.default"):
        raise _Refused(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must have a scope "
            "value with /.default suffixed to the resource identifier (application ID URI).",
        )
    audience = scopes[0][: -len("/.default")]
    resource = resource_of(audience, port)
    if resource is None:
        raise _Refused(
            400,
            "invalid_resource",
            500011,
            f"The resource principal named {audience} was not found in the tenant named "
            f"{tenant.display_name}. This can happen if the application has not been installed by the "
            "administrator of the tenant or consented to by any user in the tenant.",
        )
    return audience, resource


def identity_routes(tenant: Tenant) -> list[web.RouteDef]:
    async def token(request: web.Request) -> web.Response:
        try:
            _check_tenant(tenant, request.match_info["tenant"])
            form = await request.post()
            client_id = str(form.get("client_id", ""))
            _check_client(tenant, str(form.get("grant_type", "")), client_id, str(form.get("client_secret", "")))
            audience, resource = _audience_and_resource(tenant, str(form.get("scope", "")), local_port(request))
        except _Refused as refused:
            return refused.response()
        access = issue_token(tenant, client_id, audience, resource, f"{request.scheme}://{request.host}")
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME,
                "ext_expires_in": TOKEN_LIFETIME,
                "access_token": access,
            }
        )

    return [web.post("/{tenant}/oauth2/v2.0/token", token)]


class TokenChecker:
    """Validates `Authorization: Bearer` for one resource; caches decoded tokens (hot path)."""

    def __init__(self, tenant: Tenant, resource: str) -> None:
        self.tenant = tenant
        self.resource = resource
        self._cache: dict[str, dict[str, Any]] = {}

    def check(self, request: web.Request) -> dict[str, Any] | str:
        """Claims on success, else a short reason for the 401."""
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "Access token is empty."
        claims = self._cache.get(token)
        if claims is None:
            try:
                claims = jwt.decode(
                    token,
                    _SIGNING_KEY,
                    algorithms=["HS256"],
                    options={"verify_aud": False, "require": ["exp", "nbf", "aud", "tid"]},
                )
            except jwt.ExpiredSignatureError:
                return "Lifetime validation failed, the token is expired."
            except jwt.PyJWTError:
                return "Access token validation failure. Invalid signature or malformed token."
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = claims
        elif claims["exp"] <= time.time():
            return "Lifetime validation failed, the token is expired."
        if resource_of(str(claims["aud"]), local_port(request)) != self.resource:
            return f"Invalid audience '{claims['aud']}'."
        if claims["tid"] != self.tenant.tenant_id:
            return "The token's tenant does not match this tenant."
        return claims
