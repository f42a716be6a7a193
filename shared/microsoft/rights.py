"""The one list of rights the app needs: every Exchange cmdlet it runs (with the parameters it uses)
and every Graph application permission, each with why and what stops working without it.

`doctor` probes each of them, `docs/permissions.md` is made from this list
(`python -m shared.microsoft.rights > docs/permissions.md`), and tests fail when the docs and the
list disagree, or when the code runs a cmdlet the list does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared.model.auth_policy import APP_POLICY_NAME, CREATE_APP_POLICY, TAKES_EFFECT_WITHIN


class Probe(StrEnum):
    """How doctor tries a cmdlet without changing anything."""

    LIST = "list"  # a read of one object (-ResultSize 1)
    READ = "read"  # a read without parameters (organisation-wide settings)
    LOOKUP = "lookup"  # a read of a random GUID that names no object: "not found" means allowed
    SET = "set"  # a Set on a random GUID that names no object: "not found" means allowed


@dataclass(frozen=True, slots=True)
class ExchangeRight:
    cmdlet: str
    parameters: tuple[str, ...]
    why: str
    without: str
    probe: Probe
    required: bool = True  # False: a feature degrades, the sweeps still work
    probe_value: bool | None = None  # a SET probe's value of its second parameter, on a GUID that names nothing


@dataclass(frozen=True, slots=True)
class GraphPermission:
    name: str
    why: str
    without: str
    required: bool = True


EXCHANGE_APP_PERMISSION: Final = "Exchange.ManageAsApp"

EXCHANGE_RIGHTS: Final = (
    ExchangeRight(
        "Get-CASMailbox",
        ("Identity", "ResultSize", "Filter"),
        "list every mailbox's SMTP AUTH setting (the sweeps, the inventory); look one mailbox up",
        "no sweep can run: every run fails closed before it changes anything",
        Probe.LIST,
    ),
    ExchangeRight(
        "Set-CASMailbox",
        ("Identity", "SmtpClientAuthenticationDisabled"),
        "switch SMTP AUTH off (sweeps, revocations) and on (approvals, undo)",
        "enforce runs, approvals and revocations fail; report mode still works",
        Probe.SET,
        probe_value=True,
    ),
    ExchangeRight(
        "Get-TransportConfig",
        (),
        "read the organisation's SmtpClientAuthenticationDisabled",
        "no sweep can run (a null mailbox follows the organisation flag)",
        Probe.READ,
    ),
    ExchangeRight(
        "Get-Recipient",
        ("Identity",),
        "resolve an exception's owner to a user of the tenant",
        "grants with an owner are refused",
        Probe.LOOKUP,
    ),
    ExchangeRight(
        "Get-Mailbox",
        ("Identity",),
        "the type and UPN of the mailboxes the inventory lists",
        "`inventory` fails",
        Probe.LOOKUP,
        required=False,
    ),
    ExchangeRight(
        "Get-User",
        ("Identity",),
        "the authentication policy assigned to a mailbox's user (the approval page's Basic blockers, "
        "OAuth-only exceptions)",
        "the approval page cannot say which authentication policy applies; with OAUTH_ONLY_POLICY on, "
        "no policy is assigned or restored",
        Probe.LOOKUP,
        required=False,
    ),
    ExchangeRight(
        "Set-User",
        ("Identity", "AuthenticationPolicy"),
        f"assign the app's authentication policy ('{APP_POLICY_NAME}') to the users of OAuth-only exceptions, "
        "and put their previous one back (OAUTH_ONLY_POLICY=enforce)",
        "OAuth-only exceptions allow Basic SMTP too wherever no policy blocks it; the sweeps still work",
        Probe.SET,
        required=False,
    ),
    ExchangeRight(
        "Get-AuthenticationPolicy",
        (),
        "which authentication policies block Basic SMTP AUTH, and whether the app's exists",
        "the approval page cannot warn that a policy blocks Basic; with OAUTH_ONLY_POLICY on, no policy "
        "is assigned or restored",
        Probe.READ,
        required=False,
    ),
    ExchangeRight(
        "Get-OrganizationConfig",
        (),
        "the organisation's default authentication policy",
        "the approval page cannot say which authentication policy applies; with OAUTH_ONLY_POLICY on, "
        "no policy is assigned or restored",
        Probe.READ,
        required=False,
    ),
)

GRAPH_PERMISSIONS: Final = (
    GraphPermission(
        "User.Read.All",
        "resolve the requester, the mailbox's user and owners; the approver group's members' mail",
        "requests and approvals fail",
    ),
    GraphPermission(
        "GroupMember.Read.All",
        "check that an approver is in APPROVER_GROUP_ID",
        "nobody can approve through the group (APPROVERS still works)",
    ),
    GraphPermission(
        "Mail.Send",
        "send the notification mail from NOTIFY_FROM: scope it to that mailbox (docs/permissions.md)",
        "no approval, decision or expiry mail is sent; the outbox retries",
    ),
    GraphPermission(
        "Policy.Read.All",
        "read security defaults and Conditional Access blocks of legacy auth (the approval page)",
        "the approval page cannot warn that Basic is blocked",
        required=False,
    ),
    GraphPermission(
        "AuditLog.Read.All",
        "read SMTP AUTH sign-ins, the usage evidence (needs Entra ID P1 or P2)",
        "the inventory, `exceptions show` and the approval page go without sign-ins",
        required=False,
    ),
)


def cmdlets() -> set[str]:
    return {right.cmdlet for right in EXCHANGE_RIGHTS}


def render_markdown() -> str:
    """docs/permissions.md, made from the lists above."""
    lines = [
        "# Permissions",
        "",
        "Made from `shared/microsoft/rights.py` (`python -m shared.microsoft.rights > docs/permissions.md`);",
        "a test fails when they disagree. `python -m shared.cli doctor` probes every right below.",
        "",
        "## Exchange Online",
        "",
        f"The application permission `{EXCHANGE_APP_PERMISSION}` on *Office 365 Exchange Online*",
        "(appId 00000002-0000-0ff1-ce00-000000000000), and an Exchange role that holds these cmdlets with",
        "these parameters: the built-in Exchange Recipient Administrator does, and a custom management role",
        "holding only them is tighter (check each with `Get-ManagementRole -Cmdlet <name>`).",
        "",
        "| cmdlet | parameters | required | why | without it |",
        "|---|---|---|---|---|",
    ]
    for right in EXCHANGE_RIGHTS:
        parameters = ", ".join(f"-{p}" for p in right.parameters) or "none"
        required = "yes" if right.required else "no"
        lines.append(f"| `{right.cmdlet}` | {parameters} | {required} | {right.why} | {right.without} |")
    lines += [
        "",
        "## Microsoft Graph (application permissions)",
        "",
        "| permission | required | why | without it |",
        "|---|---|---|---|",
    ]
    for permission in GRAPH_PERMISSIONS:
        required = "yes" if permission.required else "no"
        lines.append(f"| `{permission.name}` | {required} | {permission.why} | {permission.without} |")
    lines += [
        "",
        *_app_policy_section(),
        "Mail.Send granted in Entra reaches every mailbox. Scope it to `NOTIFY_FROM`: grant it only through",
        "Exchange's RBAC for Applications with a management scope, or keep the Entra grant and restrict it",
        "with an application access policy (`New-ApplicationAccessPolicy -AccessRight RestrictAccess`).",
        "Both need the ExchangeOnlineManagement module.",
        "",
    ]
    return "\n".join(lines)


def _app_policy_section() -> list[str]:
    return [
        "## The app's authentication policy (OAuth-only exceptions)",
        "",
        "SMTP AUTH switched on for a mailbox allows Basic SMTP too, wherever the user's authentication policy",
        "(assigned, or the organisation's default) does not block it. With `OAUTH_ONLY_POLICY=enforce` the",
        f"sweeps assign the users of OAuth-only exceptions the policy `{APP_POLICY_NAME}`, which blocks",
        "Basic for every protocol, where nothing blocks Basic SMTP already, and put the previous assignment",
        f"back when the exception ends. A change of policy can take {TAKES_EFFECT_WITHIN} to apply.",
        "",
        "Creating a policy needs rights the sweeps should not hold, so an admin creates it once:",
        "",
        "```powershell",
        CREATE_APP_POLICY,
        "```",
        "",
        "`doctor` says whether it exists; a sweep that cannot find it says so once per run and goes on.",
        "",
    ]


if __name__ == "__main__":
    print(render_markdown(), end="")
