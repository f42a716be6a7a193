"""`doctor`: every right and setting the app needs, checked at once and without changing anything.

One check a line: the settings, storage and the install marker, a token for Exchange and for Graph,
each Exchange cmdlet on the rights list, the Graph permissions, Mail.Send as NOTIFY_FROM, sign-in
log access (Entra ID P1), the enforcement hold and the clock against the token service.

Probes change nothing. A read cmdlet is tried with a harmless read; a Set cmdlet on a random GUID
that names no object, where "not found" means the right is there. Sends nothing: Mail.Send is tried
with a message without recipients, which Exchange refuses after it has checked the right.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import jwt
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError

from shared.bootstrap import open_exchange, open_graph, open_store
from shared.errors import ExchangeCommandError, GuardError, MailboxNotFoundError, first_line
from shared.microsoft.exchange import ExchangeClient
from shared.microsoft.graph import NOT_PREMIUM, GraphClient, GraphError
from shared.microsoft.identity import build_credential
from shared.microsoft.rights import EXCHANGE_APP_PERMISSION, EXCHANGE_RIGHTS, GRAPH_PERMISSIONS, ExchangeRight, Probe
from shared.model.auth_policy import APP_POLICY_NAME, CREATE_APP_POLICY, AuthPolicies
from shared.settings import (
    OAuthOnlyMode,
    Settings,
    SettingsError,
    WorkflowSettings,
    load_settings,
    load_workflow_settings,
)
from shared.storage import Store

SKEW_WARN: Final = timedelta(minutes=1)
SKEW_FAIL: Final = timedelta(minutes=5)  # tokens and Easy Auth allow about this much
NOT_IN_ROLE: Final = "CommandNotFoundException"


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    level: Level
    detail: str
    required: bool = True  # a FAIL of a required check makes doctor exit 1

    @property
    def blocks(self) -> bool:
        return self.level is Level.FAIL and self.required


def ok(name: str, detail: str) -> Check:
    return Check(name, Level.OK, detail)


async def run_doctor(env: dict[str, str] | None = None) -> list[Check]:
    """Every check; settings it cannot load are a FAIL line, and the checks that need them are skipped."""
    try:
        settings = load_settings(env)
    except SettingsError as err:
        return [Check("settings", Level.FAIL, str(err))]
    mode = f"{settings.enforcement_mode.value} mode, OAUTH_ONLY_POLICY={settings.oauth_only_policy.value}"
    checks = [ok("settings", f"tenant {settings.tenant_id}, {mode}")]
    workflow: WorkflowSettings | None = None
    try:
        workflow = load_workflow_settings(env)
    except SettingsError as err:  # the sweeps need none of them; the requests and approvals do
        checks.append(Check("workflow settings", Level.WARN, f"{err}: requests and approvals cannot run"))
    credential = build_credential()
    try:
        checks += await _with_settings(settings, workflow, credential)
    finally:
        await credential.close()  # type: ignore[attr-defined]
    return checks


async def _with_settings(
    settings: Settings, workflow: WorkflowSettings | None, credential: AsyncTokenCredential
) -> list[Check]:
    checks: list[Check] = []
    async with open_store(settings, credential) as store:
        checks += await _storage(store, settings.tenant_id)
    exchange_token, check = await _token(credential, settings.exchange_scope, "Exchange")
    checks.append(check)
    graph_token, check = await _token(credential, f"{settings.graph_endpoint}/.default", "Graph")
    checks.append(check)
    if exchange_token is not None:
        checks.append(_clock(exchange_token))
        checks.append(_roles(exchange_token, "Exchange", {EXCHANGE_APP_PERMISSION: True}))
        async with open_exchange(settings, credential) as exchange:
            checks += [await _cmdlet(exchange, right) for right in EXCHANGE_RIGHTS]
            checks.append(await _app_policy(exchange, settings.oauth_only_policy))
    if graph_token is not None:
        checks.append(_roles(graph_token, "Graph", {p.name: p.required for p in GRAPH_PERMISSIONS}))
        graph = open_graph(settings, credential)
        checks.append(await _mail_send(graph, workflow))
        checks.append(await _sign_ins(graph))
    return checks


async def _storage(store: Store, tenant_id: str) -> list[Check]:
    try:
        marker = await store.state.require_current(tenant_id)
    except GuardError as err:
        return [Check("storage", Level.FAIL, str(err))]
    found = [ok("storage", f"install marker of tenant {marker.tenant_id}, schema version {marker.schema_version}")]
    try:
        hold = await store.state.hold()
    except GuardError as err:
        return [*found, Check("enforcement hold", Level.FAIL, f"could not be read: {err}")]
    if hold is None:
        return [*found, ok("enforcement hold", "none: enforce sweeps apply their plans")]
    return [*found, Check("enforcement hold", Level.WARN, f"sweeps apply nothing: {hold.describe()}", required=False)]


async def _token(credential: AsyncTokenCredential, scope: str, what: str) -> tuple[dict[str, Any] | None, Check]:
    try:
        token = await credential.get_token(scope)
    except AzureError as err:  # ClientAuthenticationError and the transport's errors
        return None, Check(f"{what} token", Level.FAIL, f"no token for {scope}: {first_line(err)}")
    try:  # read for the clock and the roles only: the token is our credential's own, never trusted here
        claims = jwt.decode(token.token, options={"verify_signature": False})
    except jwt.PyJWTError as err:
        return None, Check(f"{what} token", Level.FAIL, f"the token for {scope} is not a JWT: {err}")
    expires = datetime.fromtimestamp(token.expires_on, UTC)
    app = claims.get("appid") or claims.get("azp")
    return claims, ok(f"{what} token", f"for app {app}, valid to {expires:%H:%M}Z")


def _clock(claims: dict[str, Any]) -> Check:
    """The token service stamps `iat`: a local clock far from it breaks tokens and the approval links."""
    issued = claims.get("iat")
    if not isinstance(issued, int | float):
        return Check("clock", Level.WARN, "the token has no issue time to compare with", required=False)
    skew = timedelta(seconds=time.time() - issued)
    side = "behind" if skew.total_seconds() < 0 else "ahead of"
    detail = f"{abs(skew.total_seconds()):.0f} s {side} the token service"
    if abs(skew) > SKEW_FAIL:
        return Check("clock", Level.FAIL, f"{detail}: set the clock (tokens allow about 5 minutes)")
    return Check("clock", Level.WARN if abs(skew) > SKEW_WARN else Level.OK, detail, required=False)


def _roles(claims: dict[str, Any], what: str, wanted: dict[str, bool]) -> Check:
    """The application permissions in the token (`roles`) against the rights list."""
    granted = set(claims.get("roles") or [])
    missing = [name for name in wanted if name not in granted]
    required = [name for name in missing if wanted[name]]
    if required:
        held = ", ".join(sorted(granted)) or "none"
        return Check(f"{what} permissions", Level.FAIL, f"missing {', '.join(missing)} (granted: {held})")
    if missing:
        detail = f"missing {', '.join(missing)}: see docs/permissions.md"
        return Check(f"{what} permissions", Level.WARN, detail, required=False)
    return ok(f"{what} permissions", ", ".join(name for name in wanted))


async def _cmdlet(exchange: ExchangeClient, right: ExchangeRight) -> Check:
    name = f"Exchange {right.cmdlet}"
    nobody = str(uuid.uuid4())  # names no object: a Set or a lookup of it changes and finds nothing
    if right.probe is Probe.SET:  # the cmdlet's own setting, on a GUID that names no object
        parameters: dict[str, Any] = {"Identity": nobody, right.parameters[1]: right.probe_value}
    else:
        parameters = {Probe.LIST: {"ResultSize": 1}, Probe.READ: {}, Probe.LOOKUP: {"Identity": nobody}}[right.probe]
    try:
        await exchange.invoke(right.cmdlet, parameters)
    except MailboxNotFoundError:
        return ok(name, "allowed (a random GUID was not found, as it should be)")
    except ExchangeCommandError as err:
        return Check(name, Level.FAIL, _refusal(right, err), right.required)
    except GuardError as err:
        return Check(name, Level.FAIL, f"could not be tried: {err}", right.required)
    return ok(name, "allowed")


async def _app_policy(exchange: ExchangeClient, mode: OAuthOnlyMode) -> Check:
    """Whether the policy the sweeps assign exists and blocks Basic SMTP: said while OAUTH_ONLY_POLICY
    is off (an ok line), a warning in report mode, a blocking FAIL when enforced."""
    name, needed = "app authentication policy", mode is OAuthOnlyMode.ENFORCE
    level = {OAuthOnlyMode.OFF: Level.OK, OAuthOnlyMode.REPORT: Level.WARN}.get(mode, Level.FAIL)
    unused = f" (not used while OAUTH_ONLY_POLICY={mode.value})" if mode is OAuthOnlyMode.OFF else ""
    try:
        policies = AuthPolicies(tuple(await exchange.invoke("Get-AuthenticationPolicy", {})))
    except GuardError as err:
        return Check(name, level, f"could not be read: {err}{unused}", needed)
    if policies.blocks_basic_smtp(APP_POLICY_NAME):
        return ok(name, f"'{APP_POLICY_NAME}' exists and blocks Basic SMTP{unused}")
    if policies.app_policy is None:
        detail = f"'{APP_POLICY_NAME}' does not exist: create it with `{CREATE_APP_POLICY}`{unused}"
    else:
        detail = (
            f"'{APP_POLICY_NAME}' allows Basic SMTP, so assigning it blocks nothing: run "
            f'`Set-AuthenticationPolicy -Identity "{APP_POLICY_NAME}" -AllowBasicAuthSmtp:$false`{unused}'
        )
    return Check(name, level, detail, needed)


def _refusal(right: ExchangeRight, err: ExchangeCommandError) -> str:
    """Exchange's two ways of saying "you may not run this", each named, and anything else."""
    if err.status in (401, 403):
        return (
            f"the app may not run {right.cmdlet} (HTTP {err.status}): grant {EXCHANGE_APP_PERMISSION} and an "
            f"Exchange role holding it; without it, {right.without}"
        )
    if err.error_type == NOT_IN_ROLE:
        return (
            f"{right.cmdlet} is outside the app's management role ({NOT_IN_ROLE}): add it with "
            f"{', '.join('-' + p for p in right.parameters) or 'no parameters'}; without it, {right.without}"
        )
    return f"{right.cmdlet} failed: HTTP {err.status} {err.error_type}: {err.message[:200]}"


async def _mail_send(graph: GraphClient, workflow: WorkflowSettings | None) -> Check:
    """sendMail as NOTIFY_FROM with no recipient: refused as invalid only once the right was checked."""
    if workflow is None:
        return Check("Mail.Send as NOTIFY_FROM", Level.WARN, "not checked: the workflow settings are invalid", False)
    sender = workflow.notify_from
    try:
        await graph.send_mail(sender, [], "SMTP AUTH Guard doctor", "<p>never sent</p>", "never sent")
    except GraphError as err:
        if err.status == 400:
            return ok("Mail.Send as NOTIFY_FROM", f"{sender} may send (a message without recipients was refused)")
        return Check("Mail.Send as NOTIFY_FROM", Level.FAIL, f"{sender} may not send: {err}")
    accepted = f"a message without recipients was accepted from {sender}"
    return Check("Mail.Send as NOTIFY_FROM", Level.WARN, accepted, False)


async def _sign_ins(graph: GraphClient) -> Check:
    since = datetime.now(UTC) - timedelta(minutes=5)
    read = await graph.smtp_sign_ins(since)
    if not read.unavailable:
        return ok("sign-in logs", "readable: usage evidence is available")
    why = "no Entra ID P1" if NOT_PREMIUM in read.unavailable else "not readable"
    return Check("sign-in logs", Level.WARN, f"{why}: {read.unavailable}; usage evidence goes without sign-ins", False)
