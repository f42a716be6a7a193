"""Exchange admin REST (`/adminapi/beta/{tenant}/InvokeCommand` and `$batch`) as aiohttp handlers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web
from yarl import URL

from .calllog import CallLog, call_key
from .faults import Faults
from .identity import TokenChecker
from .opath import FilterError, Predicate, compile_filter
from .tenant import MAILBOX_TYPES, Mailbox, Tenant

SERVER_FQDN = "EMULATOR01.prod.outlook.com"
MAX_PAGE_SIZE = 1000
DEFAULT_RESULT_SIZE = 1000
MAX_BATCH = 10
CONCURRENCY_MESSAGE = (
    "You have reached the maximum number of concurrent requests per tenant. Please wait and try again."
)
DEFAULT_RESULT_WARNING = (
    "By default, only the first 1000 items are returned. Use the ResultSize parameter to specify the number "
    'of items returned. To return all items, specify "-ResultSize Unlimited". Be aware that, depending on the '
    "actual number of items, returning all items can take a long time and consume a large amount of memory."
)
_STATUS_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}
_JSON_HEADERS = {"Content-Type": "application/json; odata.metadata=minimal; charset=utf-8"}


# -- serialisation -----------------------------------------------------------------------------


def iso(dt: datetime) -> str:
    """EXO REST style, 7 fractional digits and Z: '2026-11-28T05:56:20.1234560Z'.

    %-formatting: half the cost of isoformat on an aware datetime, a third of strftime.
    """
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06d0Z" % (  # noqa: UP031
        dt.year,
        dt.month,
        dt.day,
        dt.hour,
        dt.minute,
        dt.second,
        dt.microsecond,
    )


Getter = Callable[[Mailbox], Any]

# attrgetter is C code: $select pages call these 1000s of times.
_MAILBOX_FIELDS: dict[str, Getter] = {
    "Guid": attrgetter("guid"),
    "ExchangeGuid": attrgetter("guid"),
    "ExternalDirectoryObjectId": attrgetter("external_directory_object_id"),
    "Identity": attrgetter("alias"),
    "Name": attrgetter("alias"),
    "DisplayName": attrgetter("display_name"),
    "Alias": attrgetter("alias"),
    "PrimarySmtpAddress": attrgetter("primary_smtp_address"),
    "UserPrincipalName": attrgetter("user_principal_name"),
    "RecipientType": lambda m: "UserMailbox",
    "RecipientTypeDetails": attrgetter("recipient_type_details"),
    "WhenCreated": lambda m: iso(m.when_created),
    "WhenCreatedUTC": lambda m: iso(m.when_created),
    "WhenChanged": lambda m: iso(m.when_changed),
    "WhenChangedUTC": lambda m: iso(m.when_changed),
    "WhenMailboxCreated": lambda m: iso(m.when_mailbox_created),
}
_CAS_FIELDS: dict[str, Getter] = {
    "Guid": attrgetter("guid"),
    "ExternalDirectoryObjectId": attrgetter("external_directory_object_id"),
    "Identity": attrgetter("alias"),
    "Name": attrgetter("alias"),
    "DisplayName": attrgetter("display_name"),
    "PrimarySmtpAddress": attrgetter("primary_smtp_address"),
    "SmtpClientAuthenticationDisabled": attrgetter("smtp_client_authentication_disabled"),
    "WhenCreated": lambda m: iso(m.when_created),
    "WhenCreatedUTC": lambda m: iso(m.when_created),
    "WhenChanged": lambda m: iso(m.when_changed),
    "WhenChangedUTC": lambda m: iso(m.when_changed),
}


def _mailbox_full(m: Mailbox) -> dict[str, Any]:
    # Unrolled: each date formatted once, no per-field lambda calls.
    created, changed = iso(m.when_created), iso(m.when_changed)
    return {
        "Guid": m.guid,
        "ExchangeGuid": m.guid,
        "ExternalDirectoryObjectId": m.external_directory_object_id,
        "Identity": m.alias,
        "Name": m.alias,
        "DisplayName": m.display_name,
        "Alias": m.alias,
        "PrimarySmtpAddress": m.primary_smtp_address,
        "UserPrincipalName": m.user_principal_name,
        "RecipientType": "UserMailbox",
        "RecipientTypeDetails": m.recipient_type_details,
        "WhenCreated": created,
        "WhenCreatedUTC": created,
        "WhenChanged": changed,
        "WhenChangedUTC": changed,
        "WhenMailboxCreated": iso(m.when_mailbox_created),
    }


def _cas_full(m: Mailbox) -> dict[str, Any]:
    created, changed = iso(m.when_created), iso(m.when_changed)
    return {
        "Guid": m.guid,
        "ExternalDirectoryObjectId": m.external_directory_object_id,
        "Identity": m.alias,
        "Name": m.alias,
        "DisplayName": m.display_name,
        "PrimarySmtpAddress": m.primary_smtp_address,
        "SmtpClientAuthenticationDisabled": m.smtp_client_authentication_disabled,
        "WhenCreated": created,
        "WhenCreatedUTC": created,
        "WhenChanged": changed,
        "WhenChangedUTC": changed,
    }


Serializer = Callable[[Mailbox], dict[str, Any]]


def _serializer(fields: dict[str, Getter], full: Serializer, select: str | None) -> Serializer:
    if not select:
        return full
    by_lower = {k.lower(): (k, g) for k, g in fields.items()}
    # Unknown $select names are ignored rather than rejected (the real service's behaviour is unverified).
    chosen = [by_lower[s.strip().lower()] for s in select.split(",") if s.strip().lower() in by_lower]
    return lambda m: {k: g(m) for k, g in chosen}


# -- errors --------------------------------------------------------------------------------------


class CmdletError(Exception):
    def __init__(self, status: int, exc_type: str, message: str, detail_code: str = "Client") -> None:
        super().__init__(message)
        self.status = status
        self.exc_type = exc_type
        self.message = message
        self.detail_code = detail_code


def error_body(
    status: int, exc_type: str, message: str, *, detail_code: str = "Client", top_message: str = "Invalid Operation"
) -> dict[str, Any]:
    """Shaped like live EXO captures: error.message says nothing, the text is in details/innererror."""
    prefix = "" if detail_code == "Client" else detail_code
    return {
        "error": {
            "code": _STATUS_CODES.get(status, "Error"),
            "message": top_message,
            # Live captures: "Ex6F9304|Type|text" for cmdlet errors, "|Type|text" when the code is "Client".
            "details": [{"code": detail_code, "target": "", "message": f"{prefix}|{exc_type}|{message}"}],
            "innererror": {
                "message": top_message,
                "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
                "stacktrace": "",
                "internalexception": {"message": message, "type": exc_type, "stacktrace": ""},
            },
            "adminapi.warnings@odata.type": "#Collection(String)",
            "@adminapi.warnings": [],
        }
    }


def not_found(identity: str) -> CmdletError:
    return CmdletError(
        404,
        "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException",
        f"The operation couldn't be performed because object '{identity}' couldn't be found on '{SERVER_FQDN}'.",
        "Ex6F9304",
    )


def missing_parameter(name: str) -> CmdletError:
    return CmdletError(
        400,
        "System.Management.Automation.ParameterBindingException",
        f"Cannot process command because of one or more missing mandatory parameters: {name}.",
    )


def bad_parameter(message: str) -> CmdletError:
    return CmdletError(400, "Microsoft.Exchange.AdminApi.CommandInvocation.ParameterTransformationException", message)


def unknown_parameters(names: list[str]) -> CmdletError:
    return CmdletError(
        400,
        "Microsoft.Exchange.AdminApi.CommandInvocation.AmbiguousParameterSetException",
        "Parameter set cannot be resolved using the specified named parameters. Invalid cmdlet parameters "
        f"specified. {', '.join(names)}",
    )


# -- cmdlet execution (shared by InvokeCommand and $batch) -----------------------------------------


@dataclass(slots=True)
class Call:
    """One InvokeCommand, whether top level or a $batch item."""

    cmdlet: str
    params: dict[str, Any]
    select: str | None
    skiptoken: str | None
    page_size: int
    link_base: str  # absolute URL of this InvokeCommand, for @odata.nextLink

    @property
    def identity(self) -> str | None:
        value = self.params.get("Identity")
        return None if value is None else str(value)

    @property
    def filter(self) -> str | None:
        value = self.params.get("Filter")
        return None if value is None else str(value)

    @property
    def key(self) -> str:
        return call_key(self.cmdlet, self.identity, self.filter, self.skiptoken)


@dataclass(slots=True)
class Result:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None


def _check_params(call: Call, allowed: set[str]) -> None:
    unknown = [k for k in call.params if k not in allowed]
    if unknown:
        raise unknown_parameters(unknown)


def _result_cap(value: Any) -> int | None:
    """None = Unlimited."""
    if isinstance(value, str) and value.strip().lower() == "unlimited":
        return None
    try:
        cap = int(value)
    except (TypeError, ValueError):
        raise bad_parameter(
            f"Cannot process argument transformation on parameter 'ResultSize'. Cannot convert value "
            f'"{value}" to type "Microsoft.Exchange.Data.Unlimited`1[System.UInt32]".'
        ) from None
    if cap < 1:
        raise bad_parameter(f"Cannot validate argument on parameter 'ResultSize'. The value {cap} is below 1.")
    return cap


def _parse_skiptoken(token: str | None) -> tuple[str | None, int]:
    """'<last guid>' or '<last guid>~<returned so far>' (the count only matters for a numeric ResultSize)."""
    if not token:
        return None, 0
    guid, _, count = token.partition("~")
    try:
        return guid.lower(), int(count or 0)
    except ValueError:
        raise bad_parameter(f"The $skiptoken '{token}' is not valid.") from None


def _compile_filter(text: str, mailbox_created: bool) -> Predicate:
    try:
        return compile_filter(text, mailbox_created=mailbox_created)
    except FilterError as err:
        raise CmdletError(
            400,
            "Microsoft.Exchange.Data.InvalidFilterException",
            f'Cannot bind parameter \'Filter\' to the target. Exception setting "Filter": "{err}"',
        ) from None


def _continuation(
    page: list[Mailbox], more: bool, returned: int, cap: int | None, default_size: bool
) -> tuple[str | None, list[str]]:
    """The next page's skiptoken, if there is one within the ResultSize cap, and the warnings of this page."""
    if not (more and page):
        return None, []
    total = returned + len(page)
    if cap is None:
        return page[-1].guid, []
    if total < cap:
        return f"{page[-1].guid}~{total}", []
    if default_size:
        return None, [DEFAULT_RESULT_WARNING]
    return None, []


class ExchangeService:
    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self._cmdlets: dict[str, Callable[[Call], tuple[list[dict[str, Any]], str | None, list[str]]]] = {
            "get-mailbox": self._get_mailbox,
            "get-recipient": self._get_mailbox,
            "get-casmailbox": self._get_casmailbox,
            "get-transportconfig": self._get_transport_config,
            "get-authenticationpolicy": self._get_authentication_policy,
            "get-user": self._get_user,
            "get-organizationconfig": self._get_organization_config,
            "set-casmailbox": self._set_casmailbox,
            "new-authenticationpolicy": self._new_authentication_policy,
            "set-user": self._set_user,
        }

    def known(self, cmdlet: str) -> bool:
        return cmdlet.lower() in self._cmdlets

    def execute(self, call: Call) -> Result:
        handler = self._cmdlets.get(call.cmdlet.lower())
        role = self.tenant.exchange_role_cmdlets
        if role is not None and call.cmdlet.lower() not in {c.lower() for c in role}:
            handler = None  # outside the app's management role: Exchange does not know the term
        try:
            if handler is None:
                raise CmdletError(
                    400,
                    "System.Management.Automation.CommandNotFoundException",
                    f"The term '{call.cmdlet}' is not recognized as a name of a cmdlet, function, script file, "
                    "or executable program.",
                )
            values, next_token, warnings = handler(call)
        except CmdletError as err:
            return Result(err.status, error_body(err.status, err.exc_type, err.message, detail_code=err.detail_code))
        body: dict[str, Any] = {
            "@odata.context": f"{call.link_base.rsplit('/', 1)[0]}/$metadata#Collection(Exchange.GenericHashTable)",
            "adminapi.warnings@odata.type": "#Collection(String)",
            "@adminapi.warnings": warnings,
        }
        if next_token is not None:
            query = []
            if call.select:
                query.append(f"$select={quote(call.select, safe=',')}")
            query.append(f"$skiptoken={quote(next_token, safe='~-')}")
            body["@odata.nextLink"] = f"{call.link_base}?{'&'.join(query)}"
        body["value"] = values
        return Result(200, body)

    # -- listings ---------------------------------------------------------------------------

    def _list(
        self,
        call: Call,
        fields: dict[str, Getter],
        full: Serializer,
        *,
        mailbox_created: bool,
        types: set[str] | None = None,
    ) -> tuple[list[dict[str, Any]], str | None, list[str]]:
        """One page of Get-Mailbox / Get-CASMailbox: by -Identity, or a keyset page of the (filtered) listing."""
        serialize = _serializer(fields, full, call.select)
        if call.identity is not None:
            return [serialize(self._one_of(call.identity, types))], None, []
        default_size = "ResultSize" not in call.params
        cap = DEFAULT_RESULT_SIZE if default_size else _result_cap(call.params["ResultSize"])
        pred = _compile_filter(call.filter, mailbox_created) if call.filter else None
        after, returned = _parse_skiptoken(call.skiptoken)
        limit = call.page_size if cap is None else min(call.page_size, cap - returned)
        if limit <= 0:
            return [], None, []
        if pred is None and types is None:
            page = self.tenant.page(after, limit + 1)  # O(page): keyset + bisect
        else:
            page = self._scan(after, limit + 1, pred, types)
        more = len(page) > limit
        page = page[:limit]
        next_token, warnings = _continuation(page, more, returned, cap, default_size)
        return [serialize(m) for m in page], next_token, warnings

    def _one_of(self, identity: str, types: set[str] | None) -> Mailbox:
        mb = self.tenant.find(identity)
        if mb is None or (types is not None and mb.recipient_type_details not in types):
            raise not_found(identity)
        return mb

    def _scan(self, after: str | None, want: int, pred: Predicate | None, types: set[str] | None) -> list[Mailbox]:
        """Up to `want` mailboxes after the cursor that are of `types` and match `pred` (every mailbox is looked at)."""
        found: list[Mailbox] = []
        mailboxes = self.tenant.mailboxes
        for guid in self.tenant.scan(after):
            mb = mailboxes.get(guid)
            if mb is None or (types is not None and mb.recipient_type_details not in types):
                continue
            if pred is None or pred(mb):
                found.append(mb)
                if len(found) >= want:
                    break
        return found

    def _get_mailbox(self, call: Call) -> tuple[list[dict[str, Any]], str | None, list[str]]:
        _check_params(call, {"Identity", "ResultSize", "Filter", "RecipientTypeDetails"})
        types = None
        if "RecipientTypeDetails" in call.params:
            raw = call.params["RecipientTypeDetails"]
            names = [raw] if isinstance(raw, str) else list(raw or [])
            canon = {t.lower(): t for t in MAILBOX_TYPES}
            bad = [str(n) for n in names if str(n).lower() not in canon]
            if bad or not names:
                raise bad_parameter(
                    "Cannot process argument transformation on parameter 'RecipientTypeDetails'. Unable to match "
                    f"the identifier name {', '.join(bad)} to a valid enumerator name. Specify one of the "
                    f"following enumerator names and try again: {', '.join(MAILBOX_TYPES)}"
                )
            types = {canon[str(n).lower()] for n in names}
        return self._list(call, _MAILBOX_FIELDS, _mailbox_full, mailbox_created=True, types=types)

    def _get_casmailbox(self, call: Call) -> tuple[list[dict[str, Any]], str | None, list[str]]:
        _check_params(call, {"Identity", "ResultSize", "Filter"})
        return self._list(call, _CAS_FIELDS, _cas_full, mailbox_created=False)

    def _get_transport_config(self, call: Call) -> tuple[list[dict[str, Any]], str | None, list[str]]:
        _check_params(call, set())
        t = self.tenant
        return (
            [
                {
                    "Identity": "Transport Settings",
                    "Name": "Transport Settings",
                    "SmtpClientAuthenticationDisabled": t.org_smtp_client_authentication_disabled,
                    "AllowLegacyTLSClients": False,
                    "ExternalDsnReportingAuthority": t.domain,
                    "MaxSendSize": "35 MB (36,700,160 bytes)",
                    "MaxReceiveSize": "36 MB (37,748,736 bytes)",
                    "MaxRecipientEnvelopeLimit": "500",
                    "ReplyAllStormProtectionEnabled": True,
                    "OrganizationId": t.tenant_id,
                }
            ],
            None,
            [],
        )

    def _get_authentication_policy(self, call: Call) -> tuple[list[dict[str, Any]], str | None, list[str]]:
        _check_params(call, {"Identity"})
        with self.tenant.lock:
            policies = [dict(p) for p in self.tenant.authentication_policies]
        if call.identity is not None:
            policies = _named(policies, call.identity)
            if not policies:
                raise not_found(call.identity)
        return [{"Identity": p.get("Name"), **p} for p in policies], None, []

    def _get_user(self, call: Call) -> tuple[list[dict[str, Any]], str | None, list[str]]:
        """Only `-Identity` (a guid, address or UPN): the user behind a mailbox, with its AuthenticationPolicy."""
        _check_params(call, {"Identity"})
        if not call.identity:
            raise bad_parameter("Get-User needs -Identity here.")
        with self.tenant.lock:
            mb = self.tenant.find(call.identity)
            policy = self.tenant.user_authentication_policies.get(mb.guid) if mb else None
        if mb is None:
            raise not_found(call.identity)
        user = {
            "Identity": mb.alias,
            "Name": mb.alias,
            "DisplayName": mb.display_name,
            "Guid": mb.guid,
            "ExternalDirectoryObjectId": mb.external_directory_object_id,
            "UserPrincipalName": mb.user_principal_name,
            "RecipientTypeDetails": mb.recipient_type_details,
            "AuthenticationPolicy": policy,
        }
        return [user], None, []

    def _get_organization_config(self, call: Call) -> tuple[list[dict[str, Any]], str | None, list[str]]:
        _check_params(call, set())
        t = self.tenant
        with t.lock:
            default = t.default_authentication_policy
        config = {"Identity": t.domain, "Name": t.domain, "DefaultAuthenticationPolicy": default, "IsDehydrated": False}
        return [config], None, []

    def _set_casmailbox(self, call: Call) -> tuple[list[dict[str, Any]], str | None, list[str]]:
        _check_params(call, {"Identity", "SmtpClientAuthenticationDisabled"})
        identity = call.identity
        if not identity:
            raise missing_parameter("Identity")
        mb = self.tenant.find(identity)
        if mb is None:
            raise not_found(identity)
        if "SmtpClientAuthenticationDisabled" not in call.params:
            return [], None, [_no_change_warning(identity)]
        value = call.params["SmtpClientAuthenticationDisabled"]
        if value is not None and not isinstance(value, bool):
            raise bad_parameter(
                "Cannot process argument transformation on parameter 'SmtpClientAuthenticationDisabled'. "
                f'Cannot convert value "{value}" to type "System.Nullable`1[System.Boolean]".'
            )
        if mb.smtp_client_authentication_disabled is value:
            # EXO: an unchanged value is a no-op with a warning, and WhenChanged stays put.
            return [], None, [_no_change_warning(identity)]
        self.tenant.set_smtp(mb.guid, value)
        return [], None, []

    def _new_authentication_policy(self, call: Call) -> tuple[list[dict[str, Any]], str | None, list[str]]:
        """`New-AuthenticationPolicy -Name N [-AllowBasicAuth<Protocol>[:$true]]`: as in Exchange Online,
        every protocol not switched on is blocked (a new policy blocks Basic everywhere by default)."""
        _check_params(call, {"Name", *BASIC_AUTH_SWITCHES})
        name = call.params.get("Name")
        if not isinstance(name, str) or not name.strip():
            raise missing_parameter("Name")
        policy: dict[str, object] = {"Name": name.strip()}
        for switch in BASIC_AUTH_SWITCHES:
            value = call.params.get(switch, False)
            if not isinstance(value, bool):
                raise bad_parameter(
                    f'Cannot convert value "{value}" to type "System.Management.Automation.SwitchParameter".'
                )
            policy[switch] = value
        with self.tenant.lock:
            if _named(self.tenant.authentication_policies, name.strip()):
                raise CmdletError(
                    400,
                    "Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException",
                    f'The authentication policy "{name.strip()}" already exists.',
                )
            self.tenant.authentication_policies.append(policy)
        return [{"Identity": policy["Name"], **policy}], None, []

    def _set_user(self, call: Call) -> tuple[list[dict[str, Any]], str | None, list[str]]:
        """`Set-User -Identity X -AuthenticationPolicy <name>|$null`: the only parameter emulated."""
        _check_params(call, {"Identity", "AuthenticationPolicy"})
        identity = call.identity
        if not identity:
            raise missing_parameter("Identity")
        with self.tenant.lock:
            mb = self.tenant.find(identity)
            if mb is None:
                raise not_found(identity)
            if "AuthenticationPolicy" not in call.params:
                return [], None, [_no_change_warning(identity)]
            wanted = call.params["AuthenticationPolicy"]
            if wanted is not None and not isinstance(wanted, str):
                raise bad_parameter(f'Cannot convert value "{wanted}" to type "AuthPolicyIdParameter".')
            name = None
            if wanted is not None:
                match = _named(self.tenant.authentication_policies, wanted)
                if not match:
                    raise not_found(wanted)
                name = str(match[0]["Name"])
            if self.tenant.user_authentication_policies.get(mb.guid) == name:
                return [], None, [_no_change_warning(identity)]
        self.tenant.assign_authentication_policy(mb.guid, name)
        return [], None, []


# The Basic-auth switches of New-AuthenticationPolicy, one per protocol.
BASIC_AUTH_SWITCHES: Final = tuple(
    f"AllowBasicAuth{protocol}"
    for protocol in (
        "ActiveSync",
        "Autodiscover",
        "Imap",
        "Mapi",
        "OfflineAddressBook",
        "OutlookService",
        "Pop",
        "Powershell",
        "ReportingWebServices",
        "Rpc",
        "Smtp",
        "WebServices",
    )
)


def _named(policies: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    """The authentication policies called `name`: Exchange matches policy names in any case."""
    return [p for p in policies if str(p.get("Name", "")).lower() == name.lower()]


def _no_change_warning(identity: str) -> str:
    return f"The command completed successfully but no settings of '{identity}' have been modified."


# -- HTTP layer ------------------------------------------------------------------------------------


def _page_size(prefer: str | None) -> tuple[int, bool]:
    if prefer:
        for part in prefer.split(","):
            name, _, value = part.strip().partition("=")
            if name.strip().lower() == "odata.maxpagesize":
                try:
                    return max(1, min(MAX_PAGE_SIZE, int(value.strip()))), True
                except ValueError:
                    break
    return MAX_PAGE_SIZE, False


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        headers={**_JSON_HEADERS, **(headers or {})},
    )


def _fmt_retry(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _throttled(retry_after: float) -> Result:
    """A random throttling fault (top level or $batch item): 429 with Retry-After."""
    msg = f"The request was throttled. Retry after {_fmt_retry(retry_after)} seconds."
    return Result(
        429,
        error_body(429, "Microsoft.Exchange.Admin.OData.Core.ThrottlingException", msg, top_message=msg),
        {"Retry-After": _fmt_retry(retry_after)},
        retry_after,
    )


class ExchangeRoutes:
    """Auth, the concurrency gate, latency and faults around ExchangeService."""

    def __init__(self, tenant: Tenant, faults: Faults, calllog: CallLog) -> None:
        self.tenant = tenant
        self.faults = faults
        self.calllog = calllog
        self.service = ExchangeService(tenant)
        self.tokens = TokenChecker(tenant, "exchange")
        self.in_flight = 0  # touched only on the event loop thread

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/exchange/adminapi/beta/{tenant}/InvokeCommand", self.invoke),
            web.post("/exchange/adminapi/beta/{tenant}/$batch", self.batch),
        ]

    # -- shared pieces ----------------------------------------------------------------------

    def _auth(self, request: web.Request) -> web.Response | None:
        claims = self.tokens.check(request)
        reason = claims if isinstance(claims, str) else None
        tid = request.match_info["tenant"].lower()
        if reason is None and tid not in {self.tenant.tenant_id.lower(), self.tenant.domain.lower()}:
            reason = f"The tenant '{request.match_info['tenant']}' in the URL does not match the token."
        if reason is None:
            return None
        return _json(
            401,
            {"error": {"code": "InvalidAuthenticationToken", "message": reason}},
            {
                "WWW-Authenticate": 'Bearer client_id="00000002-0000-0ff1-ce00-000000000000", '
                'token_types="app_asserted_user_v1 service_asserted_app_v1", error="invalid_token"',
                "x-ms-diagnostics": f'2000001;reason="{reason}";error_category="invalid_token"',
            },
        )

    def _over_limit(self) -> Result | None:
        limit = self.faults.concurrency_limit
        if limit and self.in_flight >= limit:
            ra = self.faults.concurrency_retry_after
            return Result(
                429,
                error_body(
                    429,
                    "Microsoft.Exchange.Admin.OData.Core.ThrottlingException",
                    CONCURRENCY_MESSAGE,
                    top_message=CONCURRENCY_MESSAGE,
                ),
                {"Retry-After": _fmt_retry(ra)} if ra is not None else {},
                ra,
            )
        return None

    def _random_fault(self) -> Result | None:
        f = self.faults
        if f.roll(f.throttle_rate):
            return _throttled(f.retry_after_seconds)
        if f.roll(f.error_503_rate):
            msg = "The service is temporarily unavailable. Please try again later."
            return Result(
                503,
                error_body(503, "Microsoft.Exchange.Data.TransientException", msg, top_message=msg),
            )
        return None

    def _cmdlet_fault(self, cmdlet: str) -> Result | None:
        status = self.faults.failing_cmdlets.get(cmdlet) or next(
            (s for name, s in self.faults.failing_cmdlets.items() if name.lower() == cmdlet.lower()), None
        )
        if not status:
            return None
        return Result(
            status,
            error_body(
                status,
                "Microsoft.Exchange.Data.StoragePermanentException",
                f"An unexpected error occurred while running {cmdlet} on '{SERVER_FQDN}': "
                "Cannot open mailbox /o=ExchangeLabs/ou=Exchange Administrative Group/cn=Configuration/"
                f"cn=Servers/cn={SERVER_FQDN}/cn=Microsoft System Attendant.",
                detail_code="Ex1A3F7E",
            ),
        )

    def _item_throttle(self) -> Result | None:
        f = self.faults
        if not f.roll(f.batch_item_throttle_rate):
            return None
        return _throttled(f.retry_after_seconds)

    @staticmethod
    def _parse_input(body: Any) -> tuple[str, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("CmdletInput"), dict):
            raise CmdletError(
                400,
                "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
                'The request body must be {"CmdletInput":{"CmdletName":...,"Parameters":{...}}}.',
            )
        ci = body["CmdletInput"]
        name = ci.get("CmdletName")
        params = ci.get("Parameters") or {}
        if not isinstance(name, str) or not name or not isinstance(params, dict):
            raise CmdletError(
                400,
                "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
                "CmdletInput.CmdletName must be a string and CmdletInput.Parameters an object.",
            )
        return name, params

    # -- InvokeCommand ----------------------------------------------------------------------

    async def invoke(self, request: web.Request) -> web.Response:
        t0 = time.monotonic()
        denied = self._auth(request)
        skiptoken = request.query.get("$skiptoken")
        if denied is not None:
            self.calllog.record(kind="invoke", cmdlet=None, page=skiptoken, status=401, t=t0)
            return denied
        try:
            cmdlet, params = self._parse_input(await request.json())
        except (CmdletError, ValueError) as err:
            e = (
                err
                if isinstance(err, CmdletError)
                else CmdletError(
                    400, "Microsoft.Exchange.Admin.OData.Core.ODataServiceException", "The request body is not JSON."
                )
            )
            self.calllog.record(kind="invoke", cmdlet=None, page=skiptoken, status=400, t=t0)
            return _json(400, error_body(400, e.exc_type, e.message))
        page_size, prefer_given = _page_size(request.headers.get("Prefer"))
        call = Call(
            cmdlet=cmdlet,
            params=params,
            select=request.query.get("$select"),
            skiptoken=skiptoken,
            page_size=page_size,
            link_base=str(request.url.with_query(None)),
        )
        result = await self._guarded(lambda: self._cmdlet_fault(cmdlet) or self.service.execute(call))
        if prefer_given and result.status == 200:
            result.headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
        self.calllog.record(
            kind="invoke",
            cmdlet=cmdlet,
            identity=call.identity,
            filter_=call.filter,
            page=skiptoken,
            status=result.status,
            retry_after=result.retry_after,
            t=t0,
            key=call.key,
        )
        return _json(result.status, result.body, result.headers)

    async def _guarded(self, work: Callable[[], Result]) -> Result:
        """Concurrency gate, then latency while holding the slot, then random faults, then the work."""
        rejected = self._over_limit()
        if rejected is not None:
            return rejected
        self.in_flight += 1
        try:
            if self.faults.latency_ms > 0:
                await asyncio.sleep(self.faults.latency_ms / 1000)
            return self._random_fault() or work()
        finally:
            self.in_flight -= 1

    # -- $batch -----------------------------------------------------------------------------

    async def batch(self, request: web.Request) -> web.Response:
        t0 = time.monotonic()
        denied = self._auth(request)
        if denied is not None:
            self.calllog.record(kind="batch", cmdlet="$batch", status=401, t=t0)
            return denied
        try:
            body = await request.json()
        except ValueError:
            body = None
        requests = body.get("requests") if isinstance(body, dict) else None
        problem = None
        if not isinstance(requests, list) or not requests:
            problem = 'The batch request body must be {"requests":[...]} with at least one request.'
        elif len(requests) > MAX_BATCH:
            problem = f"The batch request contains {len(requests)} requests; the maximum is {MAX_BATCH}."
        elif not all(isinstance(r, dict) and r.get("id") is not None for r in requests):
            problem = "Every batch request needs an id."
        elif len({str(r["id"]) for r in requests}) != len(requests):
            problem = "Batch request ids must be unique."
        if problem is not None:
            self.calllog.record(kind="batch", cmdlet="$batch", status=400, t=t0)
            return _json(400, error_body(400, "Microsoft.Exchange.Admin.OData.Core.ODataServiceException", problem))
        item_logs: list[dict[str, Any]] = []
        result = await self._guarded(lambda: self._run_batch(request, requests, item_logs))
        for entry in item_logs:
            self.calllog.record(**entry)
        # Keyed by what was asked, not what ran: a throttled batch runs nothing, yet its retry must match.
        keys = ",".join(_requested_key(r) for r in requests)
        self.calllog.record(
            kind="batch",
            cmdlet="$batch",
            status=result.status,
            retry_after=result.retry_after,
            t=t0,
            key=f"$batch[{keys}]",
        )
        return _json(result.status, result.body, result.headers)

    def _run_batch(self, request: web.Request, requests: list[dict[str, Any]], logs: list[dict[str, Any]]) -> Result:
        responses = []
        for item in requests:
            t_item = time.monotonic()
            rid = str(item["id"])
            cmdlet: str | None = None
            call: Call | None = None
            try:
                if str(item.get("method", "POST")).upper() != "POST":
                    raise CmdletError(
                        405, "Microsoft.Exchange.Admin.OData.Core.ODataServiceException", "Only POST is supported."
                    )
                url = self._item_url(request, str(item.get("url", "")))
                cmdlet, params = self._parse_input(item.get("body"))
                raw_headers = item.get("headers") or {}
                headers = (
                    {str(k).lower(): str(v) for k, v in raw_headers.items()} if isinstance(raw_headers, dict) else {}
                )
                page_size, _ = _page_size(headers.get("prefer"))
                call = Call(
                    cmdlet=cmdlet,
                    params=params,
                    select=url.query.get("$select"),
                    skiptoken=url.query.get("$skiptoken"),
                    page_size=page_size,
                    link_base=str(url.with_query(None)),
                )
                res = self._item_throttle() or self._cmdlet_fault(cmdlet) or self.service.execute(call)
            except CmdletError as err:
                res = Result(err.status, error_body(err.status, err.exc_type, err.message))
            responses.append({"id": rid, "status": res.status, "headers": res.headers, "body": res.body})
            logs.append(
                {
                    "kind": "batch_item",
                    "cmdlet": cmdlet,
                    "identity": call.identity if call else None,
                    "filter_": call.filter if call else None,
                    "page": call.skiptoken if call else None,
                    "status": res.status,
                    "retry_after": res.retry_after,
                    "t": t_item,
                    "key": call.key if call else call_key(cmdlet, None, None, None),
                }
            )
        return Result(200, {"responses": responses})

    def _item_url(self, request: web.Request, raw: str) -> URL:
        url = URL(raw)
        if not url.is_absolute():
            base = request.url.with_query(None)
            # Relative to the $batch URL, as OData allows: "InvokeCommand" or "/exchange/adminapi/...".
            url = base.join(url)
        tenant = request.match_info["tenant"]
        if not url.path.endswith("/InvokeCommand") or f"/adminapi/beta/{tenant}/" not in url.path:
            raise CmdletError(
                400,
                "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
                f"The batch request URL '{raw}' is not an InvokeCommand URL of this tenant.",
            )
        return url


def _requested_key(sub_request: dict[str, Any]) -> str:
    body = sub_request.get("body") if isinstance(sub_request.get("body"), dict) else {}
    cmdlet_input = body.get("CmdletInput") if isinstance(body.get("CmdletInput"), dict) else {}
    parameters = cmdlet_input.get("Parameters") if isinstance(cmdlet_input.get("Parameters"), dict) else {}
    identity = parameters.get("Identity")
    return call_key(cmdlet_input.get("CmdletName"), None if identity is None else str(identity), None, None)
