"""Microsoft Graph, minimal: users (mailbox owners) and organization. Grows in later issues."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .identity import TokenChecker
from .tenant import Tenant


def graph_error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """Graph's error envelope, innerError included (clients log request-id)."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": str(uuid.uuid4()),
                "client-request-id": request.headers.get("client-request-id", str(uuid.uuid4())),
            },
        }
    }
    return web.json_response(body, status=status)


class GraphRoutes:
    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.tokens = TokenChecker(tenant, "graph")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/graph/v1.0/users/{id}", self.get_user),
            web.get("/graph/v1.0/organization", self.organization),
        ]

    def _auth(self, request: web.Request) -> web.Response | None:
        claims = self.tokens.check(request)
        if isinstance(claims, str):
            return graph_error(request, 401, "InvalidAuthenticationToken", claims)
        return None

    def _base(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}/graph/v1.0"

    async def get_user(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        ident = request.match_info["id"]
        mb = self.tenant.find(ident)
        # Only user mailboxes have a Graph user worth returning; shared/room/equipment owners are disabled
        # accounts that the app should not treat as people.
        if mb is None or mb.recipient_type_details != "UserMailbox":
            return graph_error(
                request,
                404,
                "Request_ResourceNotFound",
                f"Resource '{ident}' does not exist or one of its queried reference-property objects are not present.",
            )
        body: dict[str, Any] = {
            "@odata.context": f"{self._base(request)}/$metadata#users/$entity",
            "id": mb.external_directory_object_id,
            "userPrincipalName": mb.user_principal_name,
            "displayName": mb.display_name,
            "mail": mb.primary_smtp_address,
        }
        return web.json_response(body)

    async def organization(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        t = self.tenant
        org = {
            "id": t.tenant_id,
            "displayName": t.display_name,
            "tenantType": "AAD",
            "verifiedDomains": [{"name": t.domain, "isDefault": True, "isInitial": True, "type": "Managed"}],
        }
        return web.json_response({"@odata.context": f"{self._base(request)}/$metadata#organization", "value": [org]})
