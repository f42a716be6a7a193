"""Control API under /_emulator/: plain JSON, no auth, loopback only. Drives a subprocess emulator."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any

from aiohttp import web

from .calllog import CallLog
from .faults import Faults
from .opath import FilterError, parse_date
from .tenant import BLOCK_LEGACY_AUTH_NAME, Mailbox, Tenant, User


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


def user_json_compact(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "userPrincipalName": user.user_principal_name,
        "displayName": user.display_name,
        "mail": user.mail,
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
            web.post("/_emulator/mailboxes/{identity}/authentication-policy", self.set_authentication_policy),
            web.get("/_emulator/faults", self.get_faults),
            web.put("/_emulator/faults", self.put_faults),
            web.delete("/_emulator/faults", self.delete_faults),
            web.get("/_emulator/calls", self.get_calls),
            web.delete("/_emulator/calls", self.delete_calls),
            web.get("/_emulator/org", self.get_org),
            web.put("/_emulator/org", self.put_org),
            web.get("/_emulator/users", self.list_users),
            web.post("/_emulator/users", self.add_user),
            web.get("/_emulator/groups", self.list_groups),
            web.post("/_emulator/groups", self.add_group),
            web.post("/_emulator/groups/{id}/members", self.add_group_member),
            web.get("/_emulator/signins", self.list_signins),
            web.post("/_emulator/signins", self.add_signin),
            web.get("/_emulator/mail", self.list_mail),
            web.delete("/_emulator/mail", self.delete_mail),
            web.get("/_emulator/teams", self.list_teams),
            web.delete("/_emulator/teams", self.delete_teams),
            web.get("/_emulator/graph", self.get_graph),
            web.put("/_emulator/graph", self.put_graph),
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

    async def set_authentication_policy(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _bad("body must be JSON")
        if not isinstance(body, dict) or not isinstance(body.get("policy", 0), (str, type(None))):
            return _bad('body must be {"policy": "<name>"|null}')
        try:
            mb = self.tenant.assign_authentication_policy(request.match_info["identity"], body["policy"])
        except KeyError:
            return _bad(f"no mailbox {request.match_info['identity']!r}", 404)
        return web.json_response({"guid": mb.guid, "authentication_policy": body["policy"]})

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
            "default_authentication_policy": t.default_authentication_policy,
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
        default = body.get("default_authentication_policy")
        if not isinstance(default, (str, type(None))):
            return _bad("default_authentication_policy must be a policy name or null")
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
            if "default_authentication_policy" in body:
                self.tenant.default_authentication_policy = default
        return web.json_response(self._org())

    # -- Graph side ---------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='{"error": "body must be JSON"}', content_type="application/json") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"error": "body must be an object"}', content_type="application/json")
        return body

    async def list_users(self, request: web.Request) -> web.Response:
        """Every Graph user (a local sign-in page lists these)."""
        return web.json_response([user_json_compact(u) for u in self.tenant.users()])

    async def add_user(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        upn = body.get("upn") or body.get("userPrincipalName")
        if not isinstance(upn, str) or not upn:
            return _bad('body must be {"upn", "display_name"?, "with_mailbox"?, "smtp"?}')
        try:
            made = self.tenant.add_user(
                upn,
                body.get("display_name"),
                with_mailbox=body.get("with_mailbox", True) is not False,
                smtp=body.get("smtp"),
            )
        except ValueError as err:
            return _bad(str(err))
        user = self.tenant.find_user(made.user_principal_name)
        assert user is not None
        return web.json_response(user_json_compact(user), status=201)

    async def list_groups(self, request: web.Request) -> web.Response:
        with self.tenant.lock:
            groups = [
                {"id": g.id, "display_name": g.display_name, "members": list(g.members)}
                for g in self.tenant.groups.values()
            ]
        return web.json_response(groups)

    async def add_group(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = body.get("display_name")
        members = body.get("members") or []
        if not isinstance(name, str) or not isinstance(members, list):
            return _bad('body must be {"display_name", "members": [user ids, UPNs or group ids]}')
        try:
            gid = self.tenant.add_group(name, [str(m) for m in members])
        except KeyError as err:
            return _bad(str(err.args[0]), 404)
        return web.json_response({"id": gid}, status=201)

    async def add_group_member(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        member = body.get("id") or body.get("user")
        if not isinstance(member, str):
            return _bad('body must be {"id": user id, UPN or group id}')
        try:
            self.tenant.add_group_member(request.match_info["id"], member)
        except KeyError as err:
            return _bad(f"not found: {err.args[0]}", 404)
        return web.json_response({"id": request.match_info["id"], "member": member})

    async def list_signins(self, request: web.Request) -> web.Response:
        with self.tenant.lock:
            return web.json_response(list(self.tenant.signins))

    async def add_signin(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        user = body.get("user")
        if not isinstance(user, str):
            return _bad('body must be {"user", "client_app_used"?, "when"?, "status_error_code"?, "ip"?}')
        kwargs: dict[str, Any] = {}
        if "client_app_used" in body:
            kwargs["client_app_used"] = str(body["client_app_used"])
        if "status_error_code" in body:
            kwargs["status_error_code"] = int(body["status_error_code"])
        if "ip" in body:
            kwargs["ip"] = str(body["ip"])
        try:
            kwargs["when"] = _date(body.get("when"))
            entry = self.tenant.add_signin(user, **kwargs)
        except FilterError as err:
            return _bad(str(err))
        except KeyError as err:
            return _bad(str(err.args[0]), 404)
        return web.json_response(entry, status=201)

    async def list_mail(self, request: web.Request) -> web.Response:
        with self.tenant.lock:
            return web.json_response(list(self.tenant.sent_mail))

    async def delete_mail(self, request: web.Request) -> web.Response:
        with self.tenant.lock:
            self.tenant.sent_mail.clear()
        return web.json_response({"count": 0})

    async def list_teams(self, request: web.Request) -> web.Response:
        with self.tenant.lock:
            return web.json_response(list(self.tenant.teams_posts))

    async def delete_teams(self, request: web.Request) -> web.Response:
        with self.tenant.lock:
            self.tenant.teams_posts.clear()
        return web.json_response({"count": 0})

    def _graph_state(self) -> dict[str, Any]:
        t = self.tenant
        with t.lock:
            return {
                "premium": t.premium,
                "security_defaults": t.security_defaults,
                "conditional_access_policies": list(t.conditional_access_policies),
                "group_count": len(t.groups),
                "signin_count": len(t.signins),
                "sent_mail_count": len(t.sent_mail),
                "teams_post_count": len(t.teams_posts),
            }

    async def get_graph(self, request: web.Request) -> web.Response:
        return web.json_response(self._graph_state())

    async def put_graph(self, request: web.Request) -> web.Response:
        """{"premium"?, "security_defaults"?, "block_legacy_auth"?: STATE | null}.

        STATE is "enabled", "disabled" or "enabledForReportingButNotEnforced". block_legacy_auth replaces
        the "Block legacy authentication" policy; null removes it.
        """
        body = await self._body(request)
        for flag in ("premium", "security_defaults"):
            if flag in body and not isinstance(body[flag], bool):
                return _bad(f"{flag} must be true or false")
        state = body.get("block_legacy_auth")
        if state not in (None, "enabled", "disabled", "enabledForReportingButNotEnforced"):
            return _bad('block_legacy_auth must be "enabled", "disabled", "enabledForReportingButNotEnforced" or null')
        t = self.tenant
        with t.lock:
            if "premium" in body:
                t.premium = body["premium"]
            if "security_defaults" in body:
                t.security_defaults = body["security_defaults"]
            if "block_legacy_auth" in body:
                t.conditional_access_policies = [
                    p for p in t.conditional_access_policies if p.get("displayName") != BLOCK_LEGACY_AUTH_NAME
                ]
        if state is not None:
            t.block_legacy_auth_policy(state)
        return web.json_response(self._graph_state())
