"""Microsoft Graph, through msgraph-sdk: users, approver membership, mail, sign-in evidence, blockers.

The sweeps never import this module (msgraph-sdk is large); only the workflow does, lazily.
Retries with Retry-After come from msgraph-core's middleware.
"""

from __future__ import annotations

import base64
import email.policy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError
from kiota_abstractions.api_error import APIError
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph import GraphRequestAdapter, GraphServiceClient

from shared.errors import GuardError, first_line
from shared.model.usage import SMTP_CLIENT_APP, SignIn

NOT_PREMIUM: Final = "Authentication_RequestFromNonPremiumTenantOrB2CTenant"  # Graph's 403 without P1
SIGN_IN_PAGE: Final = 1000  # the most Graph returns in one page of sign-ins
SIGN_IN_SELECT: Final = ("createdDateTime", "userId", "userPrincipalName", "ipAddress", "clientAppUsed", "status")
# CRLF as RFC 5322 wants; long lines allowed so a subject with an address is not folded mid-header.
MIME_POLICY = email.policy.SMTP.clone(max_line_length=998)


# What a Graph call can raise: Graph's answer (APIError), the network under it (httpx, which the SDK
# passes through), or the credential (azure-core). All become GraphError or "not available".
GRAPH_FAILURES: Final = (APIError, httpx.HTTPError, AzureError)


class GraphError(GuardError):
    """Graph could not be reached or refused the call."""

    def __init__(self, action: str, status: int | None, detail: str) -> None:
        self.status = status
        super().__init__(f"Graph could not {action} (HTTP {status or 'n/a'}): {detail}")


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    id: str
    user_principal_name: str
    display_name: str
    mail: str


@dataclass(frozen=True, slots=True)
class Evidence:
    """Something read for the approval page, or the reason it is not available."""

    value: Any = None
    unavailable: str = ""
    complete: bool = True  # False: a read stopped at its page limit, so `value` holds the first pages


class GraphClient:
    def __init__(self, endpoint: str, credential: AsyncTokenCredential) -> None:
        host = urlsplit(endpoint).hostname or ""
        auth = AzureIdentityAuthenticationProvider(
            credential, scopes=[f"{endpoint}/.default"], allowed_hosts=[host], is_cae_enabled=False
        )
        adapter = GraphRequestAdapter(auth)
        adapter.base_url = f"{endpoint}/v1.0"
        self._client = GraphServiceClient(request_adapter=adapter)

    async def get_user(self, id_or_upn: str) -> DirectoryUser | None:
        try:
            user = await self._client.users.by_user_id(id_or_upn).get()
        except GRAPH_FAILURES as err:
            if _status(err) == 404:
                return None
            raise _error("read a user", err) from None
        if user is None:
            return None
        return DirectoryUser(
            id=user.id or "",
            user_principal_name=user.user_principal_name or "",
            display_name=user.display_name or "",
            mail=(user.mail or user.user_principal_name or "").lower(),
        )

    async def is_member(self, user_id: str, group_id: str) -> bool:
        from msgraph.generated.users.item.check_member_groups.check_member_groups_post_request_body import (
            CheckMemberGroupsPostRequestBody,
        )

        body = CheckMemberGroupsPostRequestBody(group_ids=[group_id])
        try:
            result = await self._client.users.by_user_id(user_id).check_member_groups.post(body)
        except GRAPH_FAILURES as err:
            if _status(err) == 404:
                return False
            raise _error("check group membership", err) from None
        return group_id in (result.value if result and result.value else [])

    async def group_member_mails(self, group_id: str) -> list[str]:
        """Every user in the group, nested groups included: checkMemberGroups lets their members approve,
        so they must get the mail too. (The `/microsoft.graph.user` cast would need advanced query
        parameters on transitiveMembers; the nested groups are left out here instead.)"""
        from msgraph.generated.models.user import User

        members = self._client.groups.by_group_id(group_id).transitive_members
        try:
            page = await members.get()
            mails: list[str] = []
            while page is not None:
                mails.extend(
                    (m.mail or m.user_principal_name or "").lower() for m in page.value or [] if isinstance(m, User)
                )
                if not page.odata_next_link:
                    break
                page = await members.with_url(page.odata_next_link).get()
        except GRAPH_FAILURES as err:
            raise _error("list the approver group", err) from None
        return list(dict.fromkeys(m for m in mails if m))

    async def send_mail(self, sender: str, to: Sequence[str], subject: str, html: str, text: str) -> None:
        """Send HTML with a plain-text alternative: Graph's MIME form of sendMail (base64 MIME, text/plain)."""
        from kiota_abstractions.method import Method
        from kiota_abstractions.request_information import RequestInformation
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        mime = EmailMessage(policy=MIME_POLICY)
        mime["From"] = sender
        mime["To"] = ", ".join(to)
        mime["Subject"] = subject
        mime.set_content(text)
        mime.add_alternative(html, subtype="html")
        builder = self._client.users.by_user_id(sender).send_mail
        info = RequestInformation(Method.POST, builder.url_template, builder.path_parameters)
        info.set_stream_content(base64.b64encode(mime.as_bytes()), "text/plain")
        try:
            await builder.request_adapter.send_no_response_content_async(info, {"XXX": ODataError})
        except GRAPH_FAILURES as err:
            raise _error("send mail", err) from None

    async def smtp_sign_ins(
        self,
        since: datetime,
        until: datetime | None = None,
        *,
        user_id: str = "",
        upn: str = "",
        succeeded: bool | None = None,
        max_pages: int | None = None,
    ) -> Evidence:
        """Every `Authenticated SMTP` sign-in in [since, until), of one user (by object id, else UPN) or
        of all, every page.

        Evidence(value=list[SignIn]), or why the log cannot be read (no AuditLog.Read.All, no P1).
        The pages go through the SDK's request adapter (auth, retries, errors) but are read as JSON:
        its signIn models cost about 8 ms each to build, 40 s for 5,000 sign-ins.
        """
        from msgraph.generated.audit_logs.sign_ins.sign_ins_request_builder import SignInsRequestBuilder
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        clauses = [f"clientAppUsed eq '{SMTP_CLIENT_APP}'", f"createdDateTime ge {since:%Y-%m-%dT%H:%M:%SZ}"]
        if until is not None:
            clauses.append(f"createdDateTime lt {until:%Y-%m-%dT%H:%M:%SZ}")
        if user_id:
            clauses.insert(0, f"userId eq '{_odata_string(user_id)}'")
        elif upn:
            clauses.insert(0, f"userPrincipalName eq '{_odata_string(upn)}'")
        if succeeded is not None:
            clauses.append(f"status/errorCode {'eq' if succeeded else 'ne'} 0")
        query = SignInsRequestBuilder.SignInsRequestBuilderGetQueryParameters(
            filter=" and ".join(clauses), top=SIGN_IN_PAGE, select=list(SIGN_IN_SELECT)
        )
        sign_ins = self._client.audit_logs.sign_ins
        info = sign_ins.to_get_request_information(RequestConfiguration(query_parameters=query))
        found: list[SignIn] = []
        pages = 0
        try:
            while True:
                raw = await sign_ins.request_adapter.send_primitive_async(info, "bytes", {"XXX": ODataError})
                page = json.loads(raw or b"{}")
                found.extend(_sign_in(item) for item in page.get("value") or [] if item.get("createdDateTime"))
                pages += 1
                next_link = page.get("@odata.nextLink")
                if not next_link:
                    break
                if max_pages is not None and pages >= max_pages:
                    return Evidence(value=found, complete=False)
                info = sign_ins.with_url(next_link).to_get_request_information()
        except GRAPH_FAILURES as err:
            return Evidence(unavailable=_unavailable(err, "AuditLog.Read.All and Entra ID P1"))
        except ValueError as err:  # a page that is not JSON
            return Evidence(unavailable=f"not available: Graph answered a sign-in page that is not JSON ({err})")
        return Evidence(value=found)

    async def security_defaults(self) -> Evidence:
        try:
            policy = await self._client.policies.identity_security_defaults_enforcement_policy.get()
        except GRAPH_FAILURES as err:
            return Evidence(unavailable=_unavailable(err, "Policy.Read.All"))
        return Evidence(value=bool(policy and policy.is_enabled))

    async def legacy_auth_blocks(self) -> Evidence:
        """Names of enabled Conditional Access policies that block legacy-auth clients ("other")."""
        try:
            result = await self._client.identity.conditional_access.policies.get()
        except GRAPH_FAILURES as err:
            return Evidence(unavailable=_unavailable(err, "Policy.Read.All"))
        names: list[str] = []
        for policy in result.value if result and result.value else []:
            state = str(getattr(policy.state, "value", policy.state) or "")
            apps = (
                [str(getattr(a, "value", a)) for a in (policy.conditions.client_app_types or [])]
                if (policy.conditions)
                else []
            )
            controls = (
                [str(getattr(c, "value", c)) for c in (policy.grant_controls.built_in_controls or [])]
                if (policy.grant_controls)
                else []
            )
            if state == "enabled" and "other" in apps and "block" in controls:
                names.append(policy.display_name or policy.id or "unnamed policy")
        return Evidence(value=names)


def _odata_string(value: str) -> str:
    return value.replace("'", "''")


def sign_in_window(now: datetime, days: int = 30) -> datetime:
    return now - timedelta(days=days)


def _sign_in(item: dict[str, Any]) -> SignIn:
    status = item.get("status") or {}
    return SignIn(
        at=datetime.fromisoformat(str(item["createdDateTime"]).replace("Z", "+00:00")),
        ip_address=str(item.get("ipAddress") or ""),
        client_app=str(item.get("clientAppUsed") or ""),
        error_code=int(status.get("errorCode") or 0),
        user_id=str(item.get("userId") or ""),
        user_principal_name=str(item.get("userPrincipalName") or ""),
    )


def _status(err: Exception) -> int | None:
    return err.response_status_code if isinstance(err, APIError) else None


def _error(action: str, err: Exception) -> GraphError:
    if isinstance(err, APIError):
        detail = getattr(getattr(err, "error", None), "message", None) or str(err.message or err)[:300]
    else:
        detail = f"{type(err).__name__}: {str(err)[:300] or 'no detail'}"
    return GraphError(action, _status(err), first_line(str(detail)) or "no detail")


def _unavailable(err: Exception, permission: str) -> str:
    status = _status(err)
    if status is None:
        return f"not available: Graph could not be reached ({type(err).__name__})"
    if status in (401, 403):
        code = getattr(getattr(err, "error", None), "code", None) or ""
        if code == NOT_PREMIUM:
            return f"not available: the tenant has no Entra ID P1 or P2, which this needs ({code})"
        return f"not available: the app lacks {permission} ({code or status})"
    return f"not available: Graph answered HTTP {status}"
