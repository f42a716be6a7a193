"""Microsoft Graph v1.0, the part the app uses: users, group membership, sendMail, sign-in logs, the
security-defaults and Conditional Access reads; plus the Teams Workflows webhook.

Responses follow Graph's JSON (camelCase, `@odata.context`, Graph error bodies) closely enough for the
real msgraph-sdk to deserialise them. Every call goes to the call log with kind "graph" ("teams" for
the webhook) and cmdlet "<METHOD> <path>".
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiohttp import web

from .calllog import CallLog
from .faults import Faults
from .identity import TokenChecker
from .tenant import SECURITY_DEFAULTS_ID, Mailbox, Tenant, User

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

USERS_MAX_TOP = 999
USERS_DEFAULT_TOP = 100
SIGNINS_MAX_TOP = 1000
SIGNINS_DEFAULT_TOP = 1000
CHECK_MEMBER_GROUPS_MAX = 20
NOT_PREMIUM_MESSAGE = "Neither tenant is B2C or tenant doesn't have premium license"

# -- errors --------------------------------------------------------------------------------------


def graph_error(
    request: web.Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Graph's error envelope, innerError included (clients log request-id)."""
    request_id = str(uuid.uuid4())
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": request.headers.get("client-request-id", request_id),
            },
        }
    }
    return web.json_response(body, status=status, headers=headers)


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_found(ident: str) -> GraphError:
    return GraphError(
        404,
        "Request_ResourceNotFound",
        f"Resource '{ident}' does not exist or one of its queried reference-property objects are not present.",
    )


def bad_request(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


# -- $filter: comparisons joined by `and` --------------------------------------------------------

_CLAUSE = re.compile(
    r"""\s*(?P<prop>[A-Za-z][\w/]*)\s+(?P<op>eq|ne|ge|gt|le|lt)\s+
        (?P<lit>'(?:[^']|'')*'|[^\s()']+)\s*""",
    re.VERBOSE | re.IGNORECASE,
)
_AND = re.compile(r"and\b", re.IGNORECASE)
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True, slots=True)
class Clause:
    prop: str  # canonical property path, e.g. "status/errorCode"
    op: str
    value: Any


def _parse_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def parse_filter(text: str, props: dict[str, str]) -> list[Clause]:
    """Parse `a eq 'x' and b ge 2026-01-01T00:00:00Z`; `props` maps lower-cased name -> kind.

    Kinds: "string" (quoted literal, compared case-insensitively), "datetime" (unquoted ISO 8601),
    "bool", "int". Anything else is a 400, as Graph rejects what it cannot evaluate.
    """
    clauses: list[Clause] = []
    pos = 0
    canonical = {name.lower(): name for name in props}
    while True:
        m = _CLAUSE.match(text, pos)
        if m is None:
            raise bad_request("Invalid filter clause: syntax error or unsupported expression.")
        name = canonical.get(m["prop"].lower())
        if name is None:
            raise bad_request(f"Invalid filter clause: Could not find a property named '{m['prop']}'.")
        kind = props[name]
        op = m["op"].lower()
        lit = m["lit"]
        value: Any
        if kind == "string":
            if not (lit.startswith("'") and lit.endswith("'")):
                raise bad_request(f"Invalid filter clause: '{name}' needs a quoted string literal.")
            value = lit[1:-1].replace("''", "'")
            if op not in ("eq", "ne"):
                raise GraphError(400, "Request_UnsupportedQuery", f"Unsupported operator '{op}' for '{name}'.")
        elif kind == "datetime":
            if not _DATETIME.match(lit):
                raise bad_request(
                    f"Invalid filter clause: '{name}' needs an unquoted DateTimeOffset literal such as "
                    "2026-11-01T00:00:00Z."
                )
            value = _parse_datetime(lit)
        elif kind == "bool":
            if lit.lower() not in ("true", "false"):
                raise bad_request(f"Invalid filter clause: '{name}' needs true or false.")
            value = lit.lower() == "true"
        else:
            try:
                value = int(lit)
            except ValueError:
                raise bad_request(f"Invalid filter clause: '{name}' needs a number.") from None
        clauses.append(Clause(name, op, value))
        pos = m.end()
        if pos >= len(text):
            return clauses
        a = _AND.match(text, pos)
        if a is None:
            raise bad_request("Invalid filter clause: only comparisons joined by 'and' are supported here.")
        pos = a.end()


def _get_path(obj: dict[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("/"):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def matches(obj: dict[str, Any], clauses: list[Clause], props: dict[str, str]) -> bool:
    for c in clauses:
        actual = _get_path(obj, c.prop)
        kind = props[c.prop]
        if kind == "string":
            equal = isinstance(actual, str) and actual.lower() == c.value.lower()
            if equal != (c.op == "eq"):
                return False
            continue
        if actual is None:
            return False
        if kind == "datetime":
            actual = _parse_datetime(actual)
        ok = {
            "eq": actual == c.value,
            "ne": actual != c.value,
            "ge": actual >= c.value,
            "gt": actual > c.value,
            "le": actual <= c.value,
            "lt": actual < c.value,
        }[c.op]
        if not ok:
            return False
    return True


# -- users ---------------------------------------------------------------------------------------

USER_FILTER_PROPS = {
    "id": "string",
    "userPrincipalName": "string",
    "mail": "string",
    "displayName": "string",
    "givenName": "string",
    "surname": "string",
    "mailNickname": "string",
    "userType": "string",
    "accountEnabled": "bool",
}
_USER_DEFAULT = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
    "accountEnabled",
)
# Real user properties the emulator can answer for $select (the unmodelled ones are null).
_USER_KNOWN = {
    name.lower(): name
    for name in (
        *_USER_DEFAULT,
        "mailNickname",
        "userType",
        "proxyAddresses",
        "otherMails",
        "createdDateTime",
        "department",
        "companyName",
        "employeeId",
        "usageLocation",
        "country",
        "city",
        "onPremisesSyncEnabled",
    )
}


def user_json(user: User) -> dict[str, Any]:
    mb = user.mailbox
    return {
        "businessPhones": [],
        "displayName": user.display_name,
        "givenName": user.given_name,
        "jobTitle": None,
        "mail": user.mail,
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": None,
        "surname": user.surname,
        "userPrincipalName": user.user_principal_name,
        "id": user.id,
        "accountEnabled": user.account_enabled,
        "mailNickname": mb.alias if mb else user.user_principal_name.split("@", 1)[0],
        "userType": "Member",
        "proxyAddresses": [f"SMTP:{user.mail}"] if user.mail else [],
        "otherMails": [],
        "createdDateTime": mb.when_created.strftime("%Y-%m-%dT%H:%M:%SZ") if mb else None,
        "department": None,
        "companyName": None,
        "employeeId": None,
        "usageLocation": None,
        "country": None,
        "city": None,
        "onPremisesSyncEnabled": None,
    }


def parse_select(request: web.Request, known: dict[str, str] | None) -> list[str] | None:
    raw = request.query.get("$select")
    if not raw:
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if known is None:
        return names
    out = []
    for n in names:
        canon = known.get(n.lower())
        if canon is None:
            raise bad_request(f"Could not find a property named '{n}' on type 'microsoft.graph.user'.")
        out.append(canon)
    return out


def project(obj: dict[str, Any], select: list[str] | None, default: tuple[str, ...] | None = None) -> dict[str, Any]:
    keys = select if select is not None else default
    if keys is None:
        return dict(obj)
    return {k: obj.get(k) for k in keys}


# -- paging --------------------------------------------------------------------------------------


def parse_top(request: web.Request, default: int, maximum: int) -> int:
    raw = request.query.get("$top")
    if raw is None:
        return default
    try:
        top = int(raw)
    except ValueError:
        raise bad_request(f"Invalid page size specified: '{raw}'.") from None
    if not 1 <= top <= maximum:
        raise GraphError(
            400,
            "Request_UnsupportedQuery",
            f"Invalid page size specified: '{raw}'. Must be between 1 and {maximum} inclusive.",
        )
    return top


def _skip_of(request: web.Request) -> int:
    token = request.query.get("$skiptoken")
    if not token:
        return 0
    try:
        kind, _, offset = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind != "emu":
            raise ValueError
        return int(offset)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_request(
            "The specified page token value has expired or is invalid.", "Directory_ExpiredPageToken"
        ) from None


def page(request: web.Request, items: list[Any], top: int) -> tuple[list[Any], str | None]:
    """Offset paging behind an opaque $skiptoken; the next link keeps $filter, $select and $top."""
    skip = _skip_of(request)
    chunk = items[skip : skip + top]
    if skip + top >= len(items):
        return chunk, None
    token = base64.urlsafe_b64encode(f"emu:{skip + top}".encode()).decode()
    query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
    query["$skiptoken"] = token
    return chunk, str(request.url.with_query(query))


# -- sendMail's JSON message -------------------------------------------------------------------


def _recipients(message: dict[str, Any], field: str) -> list[str]:
    """The addresses of one recipient list (toRecipients, ccRecipients, bccRecipients); [] if absent."""
    raw = message.get(field) or []
    if not isinstance(raw, list):
        raise bad_request(f"'{field}' must be a list of recipients.", "RequestBodyRead")
    out = []
    for r in raw:
        addr = (r or {}).get("emailAddress", {}).get("address") if isinstance(r, dict) else None
        if not isinstance(addr, str) or "@" not in addr:
            raise bad_request(
                f"At least one recipient is not valid., Recipient '{addr or ''}' is not resolved. All "
                "recipients must be resolved before a message can be submitted.",
                "ErrorInvalidRecipients",
            )
        out.append(addr)
    return out


def _internet_headers(message: dict[str, Any]) -> dict[str, str]:
    """internetMessageHeaders as a dict; Graph takes only custom (x-) headers."""
    headers: dict[str, str] = {}
    for h in message.get("internetMessageHeaders") or []:
        name = str((h or {}).get("name", ""))
        if not name.lower().startswith("x-"):
            raise bad_request(
                f"The internet message header name '{name}' should start with 'x-' or 'X-'.",
                "InvalidInternetMessageHeader",
            )
        headers[name] = str(h.get("value", ""))
    return headers


def _attachments(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Name, content type and decoded size of each file attachment (contentBytes must be base64)."""
    attachments = []
    for a in message.get("attachments") or []:
        data = a.get("contentBytes") or ""
        try:
            size = len(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            raise bad_request("Invalid base64 in attachment contentBytes.", "RequestBodyRead") from None
        attachments.append({"name": a.get("name"), "contentType": a.get("contentType"), "size": size})
    return attachments


# -- routes --------------------------------------------------------------------------------------


def _missing_role(request: web.Request, role: str) -> web.StreamResponse:
    """What Graph answers an app token without the permission (Exchange's own APIs word it otherwise)."""
    if role == "Mail.Send":
        return graph_error(request, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    return graph_error(
        request, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
    )


def _json_body_error(err: Exception) -> GraphError:
    return bad_request(f"Unable to read JSON request payload. {err}", "RequestBodyRead")


class GraphRoutes:
    def __init__(self, tenant: Tenant, faults: Faults | None = None, calllog: CallLog | None = None) -> None:
        self.tenant = tenant
        self.faults = faults if faults is not None else Faults()
        self.calllog = calllog if calllog is not None else CallLog()
        self.tokens = TokenChecker(tenant, "graph")

    def routes(self) -> list[web.RouteDef]:
        g = self._graph
        return [
            web.get("/graph/v1.0/users", g(self.list_users, "User.Read.All")),
            web.get("/graph/v1.0/users/{id}", g(self.get_user, "User.Read.All")),
            web.post("/graph/v1.0/users/{id}/checkMemberGroups", g(self.check_member_groups, "GroupMember.Read.All")),
            web.post(
                "/graph/v1.0/directoryObjects/{id}/checkMemberGroups",
                g(self.check_member_groups_dirobj, "GroupMember.Read.All"),
            ),
            web.post("/graph/v1.0/users/{id}/sendMail", g(self.send_mail, "Mail.Send")),
            web.get("/graph/v1.0/groups/{id}", g(self.get_group, "GroupMember.Read.All")),
            web.get("/graph/v1.0/groups/{id}/members", g(self.group_members, "GroupMember.Read.All")),
            web.get(
                "/graph/v1.0/groups/{id}/transitiveMembers", g(self.group_transitive_members, "GroupMember.Read.All")
            ),
            web.get("/graph/v1.0/organization", g(self.organization)),
            web.get("/graph/v1.0/auditLogs/signIns", g(self.signins, "AuditLog.Read.All")),
            web.get(
                "/graph/v1.0/policies/identitySecurityDefaultsEnforcementPolicy",
                g(self.security_defaults, "Policy.Read.All"),
            ),
            web.get("/graph/v1.0/identity/conditionalAccess/policies", g(self.ca_policies, "Policy.Read.All")),
            web.route("*", "/graph/{tail:.*}", g(self.unknown)),
            web.post("/teams/workflows/{tail:.*}", self.teams_post),
        ]

    # -- plumbing --------------------------------------------------------------------------------

    def _graph(self, fn: Handler, role: str | None = None) -> Handler:
        """Outage fault, auth, the application permission `role`, GraphError -> error body, and the
        call log, around one Graph handler."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            t0 = time.monotonic()
            retry_after: float | None = None
            if self.faults.graph_down:
                retry_after = 1.0
                resp: web.StreamResponse = graph_error(
                    request,
                    503,
                    "serviceNotAvailable",
                    "Service unavailable. Please try again later.",
                    headers={"Retry-After": "1"},
                )
            else:
                claims = self.tokens.check(request)
                if isinstance(claims, str):
                    resp = graph_error(request, 401, "InvalidAuthenticationToken", claims)
                elif role is not None and role not in (claims.get("roles") or []):
                    resp = _missing_role(request, role)
                else:
                    try:
                        resp = await fn(request)
                    except GraphError as err:
                        resp = graph_error(request, err.status, err.code, err.message)
                    ra = resp.headers.get("Retry-After")
                    retry_after = float(ra) if ra else None
            self.calllog.record(
                kind="graph",
                cmdlet=f"{request.method} {request.path}",
                identity=request.match_info.get("id"),
                filter_=request.query.get("$filter"),
                page=request.query.get("$skiptoken"),
                status=resp.status,
                retry_after=retry_after,
                t=t0,
            )
            return resp

        return wrapped

    def _base(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}/graph/v1.0"

    def _user(self, ident: str) -> User:
        user = self.tenant.find_user(ident)
        if user is None:
            raise not_found(ident)
        return user

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as err:
            raise _json_body_error(err) from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.", "RequestBodyRead")
        return body

    async def unknown(self, request: web.Request) -> web.Response:
        segment = request.match_info["tail"].split("/")[-1] or request.match_info["tail"]
        raise bad_request(f"Resource not found for the segment '{segment}'.")

    # -- users -----------------------------------------------------------------------------------

    async def get_user(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        select = parse_select(request, _USER_KNOWN)
        user = self._user(ident)
        ctx = f"users({','.join(select)})/$entity" if select else "users/$entity"
        body = {"@odata.context": f"{self._base(request)}/$metadata#{ctx}"}
        body.update(project(user_json(user), select, _USER_DEFAULT))
        return web.json_response(body)

    async def list_users(self, request: web.Request) -> web.Response:
        select = parse_select(request, _USER_KNOWN)
        top = parse_top(request, USERS_DEFAULT_TOP, USERS_MAX_TOP)
        raw_filter = request.query.get("$filter")
        clauses = parse_filter(raw_filter, USER_FILTER_PROPS) if raw_filter else []
        # Equality on a key property is an index lookup; anything else scans every user.
        key = next((c for c in clauses if c.op == "eq" and c.prop in ("id", "userPrincipalName", "mail")), None)
        if key is not None:
            found = self.tenant.find_user(key.value)
            candidates = [found] if found is not None else []
        else:
            candidates = self.tenant.users()
        rows = [j for j in (user_json(u) for u in candidates) if matches(j, clauses, USER_FILTER_PROPS)]
        chunk, next_link = page(request, rows, top)
        ctx = f"users({','.join(select)})" if select else "users"
        body: dict[str, Any] = {"@odata.context": f"{self._base(request)}/$metadata#{ctx}"}
        if next_link:
            body["@odata.nextLink"] = next_link
        body["value"] = [project(r, select, _USER_DEFAULT) for r in chunk]
        return web.json_response(body)

    # -- groups ----------------------------------------------------------------------------------

    async def _check(self, request: web.Request, user_id: str) -> web.Response:
        body = {k.lower(): v for k, v in (await self._json(request)).items()}
        ids = body.get("groupids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise bad_request("Invalid request body: 'groupIds' must be a list of strings.", "Request_BadRequest")
        if len(ids) > CHECK_MEMBER_GROUPS_MAX:
            raise bad_request(
                f"The number of group ids in the request exceeds the limit of {CHECK_MEMBER_GROUPS_MAX}.",
                "Request_BadRequest",
            )
        value = self.tenant.member_groups(user_id, ids)
        return web.json_response(
            {"@odata.context": f"{self._base(request)}/$metadata#Collection(Edm.String)", "value": value}
        )

    async def check_member_groups(self, request: web.Request) -> web.Response:
        return await self._check(request, self._user(request.match_info["id"]).id)

    async def check_member_groups_dirobj(self, request: web.Request) -> web.Response:
        """directoryObjects/{id}: object ids only (no UPN). Groups and service principals have no groups here."""
        ident = request.match_info["id"]
        try:
            uuid.UUID(ident)
        except ValueError:
            raise bad_request(f"Invalid object identifier '{ident}'.", "Request_BadRequest") from None
        user = self.tenant.find_user(ident)
        if user is not None and user.id.lower() == ident.lower():
            return await self._check(request, user.id)
        known = ident in self.tenant.groups or any(c.object_id == ident for c in self.tenant.clients.values())
        if not known:
            raise not_found(ident)
        return await self._check(request, ident)

    async def get_group(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        group = self.tenant.groups.get(ident)
        if group is None:
            raise not_found(ident)
        return web.json_response(
            {
                "@odata.context": f"{self._base(request)}/$metadata#groups/$entity",
                "id": group.id,
                "displayName": group.display_name,
                "description": None,
                "groupTypes": [],
                "mail": None,
                "mailEnabled": False,
                "mailNickname": group.display_name.lower().replace(" ", "-"),
                "securityEnabled": True,
            }
        )

    async def group_members(self, request: web.Request) -> web.Response:
        ident = self._group_id(request)
        with self.tenant.lock:
            member_ids = list(self.tenant.groups[ident].members)
        return self._members_page(request, member_ids)

    async def group_transitive_members(self, request: web.Request) -> web.Response:
        return self._members_page(request, self.tenant.transitive_members(self._group_id(request)))

    def _group_id(self, request: web.Request) -> str:
        ident = request.match_info["id"]
        if ident not in self.tenant.groups:
            raise not_found(ident)
        return ident

    def _members_page(self, request: web.Request, member_ids: list[str]) -> web.Response:
        """Users, and nested groups as group objects, each with its "@odata.type" as Graph lists them."""
        select = parse_select(request, _USER_KNOWN)
        top = parse_top(request, USERS_DEFAULT_TOP, USERS_MAX_TOP)
        members: list[dict[str, Any]] = []
        for member_id in member_ids:
            group = self.tenant.groups.get(member_id)
            if group is not None:
                members.append(
                    {"@odata.type": "#microsoft.graph.group", "id": group.id, "displayName": group.display_name}
                )
            elif (user := self.tenant.find_user(member_id)) is not None:
                members.append(
                    {"@odata.type": "#microsoft.graph.user", **project(user_json(user), select, _USER_DEFAULT)}
                )
        chunk, next_link = page(request, members, top)
        body: dict[str, Any] = {"@odata.context": f"{self._base(request)}/$metadata#directoryObjects"}
        if next_link:
            body["@odata.nextLink"] = next_link
        body["value"] = chunk
        return web.json_response(body)

    # -- sendMail --------------------------------------------------------------------------------

    async def send_mail(self, request: web.Request) -> web.Response:
        mb = self._sender(request.match_info["id"])
        scope = self.tenant.mail_send_scope
        if scope is not None and mb.primary_smtp_address.lower() not in {a.lower() for a in scope}:
            # An application access policy that leaves this mailbox out: Exchange's answer.
            raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if self.faults.take_send_mail_failure():
            return graph_error(
                request,
                503,
                "ErrorServerBusy",
                "The server cannot service this request right now. Try again later.",
                headers={"Retry-After": "1"},
            )
        if request.content_type == "text/plain":
            record = await self._mime_mail(request)
            record.update({"from": mb.primary_smtp_address, "sender_type": mb.recipient_type_details})
        else:
            record = await self._json_mail(request, mb)
        with self.tenant.lock:
            self.tenant.sent_mail.append(record)
        return web.Response(status=202)

    def _sender(self, ident: str) -> Mailbox:
        """The mailbox that sends: any mailbox; a user without one gets Exchange's 404."""
        mb = self.tenant.find(ident)
        if mb is not None:
            return mb
        if self.tenant.find_user(ident) is not None:
            raise GraphError(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        raise GraphError(404, "ErrorInvalidUser", f"The requested user '{ident}' is invalid.")

    async def _json_mail(self, request: web.Request, mb: Mailbox) -> dict[str, Any]:
        """sendMail in JSON form: {"message": {...}, "saveToSentItems"?}, validated as Graph does."""
        # Action parameter names are case-insensitive in Graph, and msgraph-sdk sends them PascalCase
        # ("Message", "SaveToSentItems"), while the docs show camelCase.
        body = {k.lower(): v for k, v in (await self._json(request)).items()}
        message = body.get("message")
        if not isinstance(message, dict):
            raise bad_request("The 'message' parameter is required.", "ErrorInvalidParameter")
        to, cc, bcc = (_recipients(message, f) for f in ("toRecipients", "ccRecipients", "bccRecipients"))
        if not (to or cc or bcc):
            raise bad_request("At least one recipient is required, but none were found.", "ErrorInvalidRecipients")
        content = message.get("body") or {}
        content_type = str(content.get("contentType") or "text").lower()
        if content_type not in ("text", "html"):
            raise bad_request(f"Requested value '{content.get('contentType')}' was not found.", "RequestBodyRead")
        text = content.get("content") or ""
        return {
            "id": str(uuid.uuid4()),
            "sent_at": datetime.now(UTC).isoformat(),
            "from": mb.primary_smtp_address,
            "sender_type": mb.recipient_type_details,
            "to": to,
            "cc": cc,
            "bcc": bcc,
            "subject": message.get("subject") or "",
            "content_type": content_type,
            "body": text,
            "headers": _internet_headers(message),
            "attachments": _attachments(message),
            "save_to_sent_items": body.get("savetosentitems", True) is not False,
            "message": message,
            "mime": False,
            "html_body": text if content_type == "html" else None,
            "text_body": text if content_type == "text" else None,
        }

    async def _mime_mail(self, request: web.Request) -> dict[str, Any]:
        """sendMail in MIME form: `Content-Type: text/plain`, body = base64 of an RFC 5322 message.

        Recipients come from To/Cc/Bcc. The record has the same keys as the JSON form; `body` is the
        HTML part if there is one (else the text part), and `html_body` / `text_body` hold each part.
        """
        raw = await request.read()
        try:
            mime_bytes = base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(
                "Invalid base64 string for MIME content.", "ErrorMimeContentInvalidBase64String"
            ) from None
        msg = email.message_from_bytes(mime_bytes, policy=email.policy.default)
        if not msg.keys():
            raise bad_request("The MIME content is not valid.", "ErrorMimeContentInvalid")

        def addresses(name: str) -> list[str]:
            header = msg.get(name)
            return [a.addr_spec for a in header.addresses] if header is not None else []

        to, cc, bcc = addresses("To"), addresses("Cc"), addresses("Bcc")
        if not (to or cc or bcc):
            raise bad_request("At least one recipient is required, but none were found.", "ErrorInvalidRecipients")
        html_part = msg.get_body(preferencelist=("html",))
        text_part = msg.get_body(preferencelist=("plain",))
        html = html_part.get_content() if html_part is not None else None
        text = text_part.get_content() if text_part is not None else None
        attachments = [
            {
                "name": part.get_filename(),
                "contentType": part.get_content_type(),
                "size": len(part.get_payload(decode=True) or b""),
            }
            for part in msg.iter_attachments()
        ]
        return {
            "id": str(uuid.uuid4()),
            "sent_at": datetime.now(UTC).isoformat(),
            "to": to,
            "cc": cc,
            "bcc": bcc,
            "subject": str(msg.get("Subject", "")),
            "content_type": "html" if html is not None else "text",
            "body": html if html is not None else (text or ""),
            "headers": {k: str(v) for k, v in msg.items() if k.lower().startswith("x-")},
            "attachments": attachments,
            "save_to_sent_items": True,
            "message": None,
            "mime": True,
            "mime_content_type": msg.get_content_type(),
            "html_body": html,
            "text_body": text,
            "raw_mime": mime_bytes.decode("utf-8", "replace"),
        }

    # -- sign-in logs ----------------------------------------------------------------------------

    SIGNIN_FILTER_PROPS: ClassVar[dict[str, str]] = {
        "id": "string",
        "userId": "string",
        "userPrincipalName": "string",
        "userDisplayName": "string",
        "clientAppUsed": "string",
        "appId": "string",
        "appDisplayName": "string",
        "ipAddress": "string",
        "createdDateTime": "datetime",
        "status/errorCode": "int",
    }

    async def signins(self, request: web.Request) -> web.Response:
        if not self.tenant.premium:
            raise GraphError(403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant", NOT_PREMIUM_MESSAGE)
        top = parse_top(request, SIGNINS_DEFAULT_TOP, SIGNINS_MAX_TOP)
        raw_filter = request.query.get("$filter")
        clauses = parse_filter(raw_filter, self.SIGNIN_FILTER_PROPS) if raw_filter else []
        with self.tenant.lock:
            rows = list(self.tenant.signins)
        rows = [r for r in rows if matches(r, clauses, self.SIGNIN_FILTER_PROPS)]
        rows.sort(key=lambda r: r["createdDateTime"], reverse=True)  # newest first, as Graph returns
        chunk, next_link = page(request, rows, top)
        select = parse_select(request, None)
        body: dict[str, Any] = {"@odata.context": f"{self._base(request)}/$metadata#auditLogs/signIns"}
        if next_link:
            body["@odata.nextLink"] = next_link
        body["value"] = [project(r, select) for r in chunk]
        return web.json_response(body)

    # -- blockers --------------------------------------------------------------------------------

    async def security_defaults(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "@odata.context": (
                    f"{self._base(request)}/$metadata#policies/identitySecurityDefaultsEnforcementPolicy/$entity"
                ),
                "id": SECURITY_DEFAULTS_ID,
                "displayName": "Security Defaults",
                "description": (
                    "Security defaults is a set of basic identity security mechanisms recommended by Microsoft. "
                    "When enabled, these recommendations will be automatically enforced in your organization. "
                    "Administrators and users will be better protected from common identity related attacks."
                ),
                "isEnabled": self.tenant.security_defaults,
            }
        )

    async def ca_policies(self, request: web.Request) -> web.Response:
        with self.tenant.lock:
            policies = json.loads(json.dumps(self.tenant.conditional_access_policies))
        return web.json_response(
            {
                "@odata.context": f"{self._base(request)}/$metadata#identity/conditionalAccess/policies",
                "value": policies,
            }
        )

    # -- organization ----------------------------------------------------------------------------

    async def organization(self, request: web.Request) -> web.Response:
        t = self.tenant
        org = {
            "id": t.tenant_id,
            "displayName": t.display_name,
            "tenantType": "AAD",
            "verifiedDomains": [{"name": t.domain, "isDefault": True, "isInitial": True, "type": "Managed"}],
        }
        return web.json_response({"@odata.context": f"{self._base(request)}/$metadata#organization", "value": [org]})

    # -- Teams Workflows webhook (no auth: the real URL carries a SAS signature) -----------------

    async def teams_post(self, request: web.Request) -> web.Response:
        t0 = time.monotonic()
        try:
            body = json.loads(await request.text())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            resp = web.json_response(
                {
                    "error": {
                        "code": "InvalidRequestContent",
                        "message": "The input body for trigger 'manual' of type 'Request' must be of type JSON.",
                    }
                },
                status=400,
            )
        else:
            cards = [
                a.get("content")
                for a in body.get("attachments") or []
                if isinstance(a, dict) and a.get("contentType") == "application/vnd.microsoft.card.adaptive"
            ]
            with self.tenant.lock:
                self.tenant.teams_posts.append(
                    {
                        "id": str(uuid.uuid4()),
                        "received_at": datetime.now(UTC).isoformat(),
                        "path": request.path,
                        "query": dict(request.query),
                        "cards": cards,
                        "body": body,
                    }
                )
            resp = web.Response(status=202)
        self.calllog.record(kind="teams", cmdlet=f"POST {request.path}", status=resp.status, t=t0)
        return resp
