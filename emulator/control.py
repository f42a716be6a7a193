"""Control API under /_emulator/: plain JSON, no auth, loopback only. Drives a subprocess emulator."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any

from aiohttp import web

from .calllog import CallLog
from .faults import Faults
from .opath import FilterError, parse_date
from .tenant import Mailbox, Tenant


def mailbox_json(mb: Mailbox) -> dict[str, Any]:
    return {
        "guid": mb.guid,
        "external_directory_object_id": mb.external_directory_object_id,
        "address": mb.primary_smtp_address,
        "upn": mb.user_principal_name,
        "display_name": mb.display_name,
        "type": mb.recipient_type_details,
        "smtp": mb.smtp_client_authentication_disabled,
        "when_created": mb.when_created.isoformat(),
        "when_mailbox_created": mb.when_mailbox_created.isoformat(),
        "when_changed": mb.when_changed.isoformat(),
    }


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _date(value: Any) -> datetime | None:
    return None if value in (None, "") else parse_date(str(value))


@web.middleware
async def loopback_only(request: web.Request, handler: Any) -> web.StreamResponse:
    # The server binds to 127.0.0.1 anyway; this guards against someone binding it wider.
    if request.path.startswith("/_emulator/"):
        try:
            remote_ok = ipaddress.ip_address(request.remote or "").is_loopback
        except ValueError:
            remote_ok = False
        if not remote_ok:
            return _bad("the control API is loopback only", 403)
    return await handler(request)


class ControlRoutes:
    def __init__(self, tenant: Tenant, faults: Faults, calllog: CallLog) -> None:
        self.tenant = tenant
        self.faults = faults
        self.calllog = calllog

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_emulator/mailboxes", self.list_mailboxes),
            web.post("/_emulator/mailboxes", self.add_mailbox),
            web.post("/_emulator/mailboxes/{identity}/smtp", self.set_smtp),
            web.get("/_emulator/faults", self.get_faults),
            web.put("/_emulator/faults", self.put_faults),
            web.delete("/_emulator/faults", self.delete_faults),
            web.get("/_emulator/calls", self.get_calls),
            web.delete("/_emulator/calls", self.delete_calls),
            web.get("/_emulator/org", self.get_org),
            web.put("/_emulator/org", self.put_org),
        ]

    async def list_mailboxes(self, request: web.Request) -> web.Response:
        return web.json_response([mailbox_json(m) for m in self.tenant.snapshot()])

    async def add_mailbox(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            smtp = body.get("smtp")
            if smtp is not None and not isinstance(smtp, bool):
                return _bad("smtp must be true, false or null")
            mb = self.tenant.add_mailbox(
                str(body["address"]),
                type=str(body.get("type") or "UserMailbox"),
                smtp=smtp,
                when_created=_date(body.get("when_created")),
                when_mailbox_created=_date(body.get("when_mailbox_created")),
                display_name=body.get("display_name"),
            )
        except (KeyError, TypeError, AttributeError):
            return _bad('body must be {"address": ..., "type"?, "smtp"?, "when_created"?, "when_mailbox_created"?}')
        except (ValueError, FilterError) as err:
            return _bad(str(err))
        return web.json_response(mailbox_json(mb), status=201)

    async def set_smtp(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _bad("body must be JSON")
        if not isinstance(body, dict) or "value" not in body or body["value"] not in (True, False, None):
            return _bad('body must be {"value": true|false|null}')
        try:
            mb = self.tenant.set_smtp(request.match_info["identity"], body["value"])
        except KeyError:
            return _bad(f"no mailbox {request.match_info['identity']!r}", 404)
        return web.json_response(mailbox_json(mb))

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_dict())

    async def put_faults(self, request: web.Request) -> web.Response:
        """Replace the whole fault config: knobs not given go back to off."""
        try:
            body = await request.json()
            self.faults.reset(**body)
        except (ValueError, TypeError) as err:
            return _bad(str(err))
        return web.json_response(self.faults.to_dict())

    async def delete_faults(self, request: web.Request) -> web.Response:
        self.faults.reset()
        return web.json_response(self.faults.to_dict())

    async def get_calls(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind")
        cmdlet = request.query.get("cmdlet")
        entries = [
            e
            for e in self.calllog.entries()
            if (kind is None or e["kind"] == kind) and (cmdlet is None or e["cmdlet"] == cmdlet)
        ]
        return web.json_response({"count": len(entries), "entries": entries})

    async def delete_calls(self, request: web.Request) -> web.Response:
        self.calllog.clear()
        return web.json_response({"count": 0})

    def _org(self) -> dict[str, Any]:
        t = self.tenant
        return {
            "tenant_id": t.tenant_id,
            "domain": t.domain,
            "smtp_client_authentication_disabled": t.org_smtp_client_authentication_disabled,
            "authentication_policies": t.authentication_policies,
            "mailbox_count": len(t),
        }

    async def get_org(self, request: web.Request) -> web.Response:
        return web.json_response(self._org())

    async def put_org(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _bad("body must be JSON")
        if not isinstance(body, dict):
            return _bad("body must be an object")
        flag = body.get("smtp_client_authentication_disabled")
        policies = body.get("authentication_policies")
        if "smtp_client_authentication_disabled" in body and not isinstance(flag, bool):
            return _bad("smtp_client_authentication_disabled must be true or false")
        if policies is not None and not (
            isinstance(policies, list) and all(isinstance(p, dict) and "Name" in p for p in policies)
        ):
            return _bad('authentication_policies must be a list of {"Name", "AllowBasicAuthSmtp"}')
        with self.tenant.lock:
            if isinstance(flag, bool):
                self.tenant.org_smtp_client_authentication_disabled = flag
            if policies is not None:
                self.tenant.authentication_policies = policies
        return web.json_response(self._org())
