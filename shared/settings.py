"""Every app setting in one place: names, defaults, parsing and validation.

Nothing here runs at import. `import function_app` must work with no settings at all, because the
Functions host indexes functions at import; settings are checked when a function or the CLI runs.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from shared.errors import GuardError


class EnforcementMode(StrEnum):
    REPORT = "report"
    ENFORCE = "enforce"


class OAuthOnlyMode(StrEnum):
    """OAUTH_ONLY_POLICY: Basic SMTP blocked for OAuth-only exceptions' users by an authentication policy.

    Existing exceptions are `oauth`, so an upgrade starts `off` rather than assign policies at once.
    """

    OFF = "off"
    REPORT = "report"  # planned and shown, never applied
    ENFORCE = "enforce"  # applied by enforce runs, like the SMTP AUTH changes


DEFAULT_GRAPH_ENDPOINT: Final = "https://graph.microsoft.com"
DEFAULT_EXCHANGE_ENDPOINT: Final = "https://outlook.office365.com"
DEFAULT_MAX_CHANGES_PER_RUN: Final = 500
DEFAULT_EXCHANGE_CONCURRENCY: Final = 4
DEFAULT_SWEEP_TIME_BUDGET_SECONDS: Final = 480
DEFAULT_EXCEPTION_MAX_DAYS: Final = 180
DEFAULT_SWEEP_LEASE_SECONDS: Final = 60
# NCRONTAB with seconds, UTC. Read at import by the timer decorators (see `schedule`).
DEFAULT_SCHEDULES: Final[Mapping[str, str]] = {
    "SWEEP_SCHEDULE": "0 */15 * * * *",
    "RECONCILE_SCHEDULE": "0 30 2 * * *",
    "OUTBOX_SCHEDULE": "0 */2 * * * *",
    "LIFECYCLE_SCHEDULE": "0 0 7 * * *",
}
STORAGE_SETTING: Final = "AzureWebJobsStorage"
DEFAULT_REQUEST_PENDING_DAYS: Final = 14
DEFAULT_REQUEST_RATE_LIMIT_PER_DAY: Final = 10
# One person cannot hold more mailboxes than this in pending requests (each blocks others for days).
DEFAULT_REQUEST_PENDING_PER_REQUESTER: Final = 3
# Set by App Service when Authentication (Easy Auth) is on; only then are principal headers trusted.
EASY_AUTH_SETTING: Final = "WEBSITE_AUTH_ENABLED"

_KEY_VAULT_REFERENCE = "@Microsoft.KeyVault("
_URL = re.compile(r"^https://[^\s/?#]+(/[^\s?#]*)?$")


class SettingsError(GuardError):
    """A setting is missing or invalid. The message names the setting and the expected form."""

    def __init__(self, name: str, expected: str, problem: str = "is invalid") -> None:
        self.name = name
        super().__init__(f"setting {name} {problem}: expected {expected}")


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where the app's tables live: a connection string, or an endpoint reached with Entra ID."""

    connection_string: str | None = None
    table_endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    tenant_id: str
    client_id: str | None
    graph_endpoint: str
    exchange_endpoint: str
    storage: StorageConfig
    enforcement_mode: EnforcementMode
    max_changes_per_run: int
    exchange_concurrency: int
    sweep_time_budget_seconds: int
    exception_max_days: int
    sweep_lease_seconds: int = 60  # SWEEP_LEASE_SECONDS: how long a dead run can hold the others off
    oauth_only_policy: OAuthOnlyMode = OAuthOnlyMode.OFF  # OAUTH_ONLY_POLICY

    @property
    def exchange_scope(self) -> str:
        return f"{self.exchange_endpoint}/.default"


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if value.startswith(_KEY_VAULT_REFERENCE):
        raise SettingsError(name, "a value, not an unresolved Key Vault reference", "is unresolved")
    return value


def _required(env: Mapping[str, str], name: str, expected: str) -> str:
    value = _raw(env, name)
    if value is None:
        raise SettingsError(name, expected, "is missing")
    return value


def _guid(env: Mapping[str, str], name: str, *, required: bool) -> str | None:
    expected = "a GUID such as 00000000-0000-0000-0000-000000000000"
    value = _required(env, name, expected) if required else _raw(env, name)
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise SettingsError(name, expected) from None


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = _raw(env, name) or default
    if not _URL.match(value):
        raise SettingsError(name, "an https:// base URL without query, e.g. " + default)
    return value.rstrip("/")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = _raw(env, name)
    if value is None:
        return default
    expected = f"a whole number from {low} to {high}"
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(name, expected) from None
    if not low <= number <= high:
        raise SettingsError(name, expected)
    return number


def _storage(env: Mapping[str, str]) -> StorageConfig:
    expected = (
        "a connection string (UseDevelopmentStorage=true for Azurite), or "
        f"{STORAGE_SETTING}__tableServiceUri / {STORAGE_SETTING}__accountName for identity-based access"
    )
    connection = _raw(env, STORAGE_SETTING)
    if connection is not None:
        # azure-data-tables rejects a trailing ';' on the development shortcut.
        connection = connection.rstrip(";")
        if "=" not in connection:
            raise SettingsError(STORAGE_SETTING, expected)
        return StorageConfig(connection_string=connection)
    endpoint = _raw(env, f"{STORAGE_SETTING}__tableServiceUri")
    if endpoint is not None:
        if not _URL.match(endpoint):
            raise SettingsError(f"{STORAGE_SETTING}__tableServiceUri", "an https:// table service URL")
        return StorageConfig(table_endpoint=endpoint.rstrip("/"))
    account = _raw(env, f"{STORAGE_SETTING}__accountName")
    if account is not None:
        if not re.fullmatch(r"[a-z0-9]{3,24}", account):
            raise SettingsError(f"{STORAGE_SETTING}__accountName", "a storage account name (3-24 a-z0-9)")
        return StorageConfig(table_endpoint=f"https://{account}.table.core.windows.net")
    raise SettingsError(STORAGE_SETTING, expected, "is missing")


def _mode(env: Mapping[str, str]) -> EnforcementMode:
    value = (_raw(env, "ENFORCEMENT_MODE") or EnforcementMode.REPORT).lower()
    try:
        return EnforcementMode(value)
    except ValueError:
        raise SettingsError("ENFORCEMENT_MODE", "report or enforce") from None


def _oauth_only(env: Mapping[str, str]) -> OAuthOnlyMode:
    value = (_raw(env, "OAUTH_ONLY_POLICY") or OAuthOnlyMode.OFF).lower()
    try:
        return OAuthOnlyMode(value)
    except ValueError:
        raise SettingsError("OAUTH_ONLY_POLICY", "off, report or enforce") from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming the first bad one."""
    env = os.environ if env is None else env
    tenant_id = _guid(env, "AZURE_TENANT_ID", required=True)
    assert tenant_id is not None
    return Settings(
        tenant_id=tenant_id,
        client_id=_guid(env, "AZURE_CLIENT_ID", required=False),
        graph_endpoint=_url(env, "GRAPH_ENDPOINT", DEFAULT_GRAPH_ENDPOINT),
        exchange_endpoint=_url(env, "EXCHANGE_ENDPOINT", DEFAULT_EXCHANGE_ENDPOINT),
        storage=_storage(env),
        enforcement_mode=_mode(env),
        max_changes_per_run=_int(env, "MAX_CHANGES_PER_RUN", DEFAULT_MAX_CHANGES_PER_RUN, 1, 1_000_000),
        exchange_concurrency=_int(env, "EXCHANGE_CONCURRENCY", DEFAULT_EXCHANGE_CONCURRENCY, 1, 16),
        sweep_time_budget_seconds=_int(env, "SWEEP_TIME_BUDGET_SECONDS", DEFAULT_SWEEP_TIME_BUDGET_SECONDS, 1, 86_400),
        exception_max_days=_int(env, "EXCEPTION_MAX_DAYS", DEFAULT_EXCEPTION_MAX_DAYS, 1, 3650),
        sweep_lease_seconds=_int(env, "SWEEP_LEASE_SECONDS", DEFAULT_SWEEP_LEASE_SECONDS, 15, 600),
        oauth_only_policy=_oauth_only(env),
    )


@dataclass(frozen=True, slots=True)
class WorkflowSettings:
    """Settings of the request and approval workflow; the tenant, storage and limits are in `Settings`."""

    public_base_url: str
    notify_from: str
    approver_group_id: str | None
    approvers: frozenset[str]
    basic_auth_retirement_date: date | None
    teams_workflow_url: str | None
    request_pending_days: int
    request_rate_limit_per_day: int
    request_pending_per_requester: int = DEFAULT_REQUEST_PENDING_PER_REQUESTER


def _public_base_url(env: Mapping[str, str]) -> str:
    expected = "the app's public https:// URL, e.g. https://guard.contoso.com (http only for localhost)"
    value = _required(env, "PUBLIC_BASE_URL", expected).rstrip("/")
    parsed = urlsplit(value)
    loopback = parsed.hostname in ("localhost", "127.0.0.1")
    if parsed.scheme not in ("https", "http") or (parsed.scheme == "http" and not loopback) or not parsed.netloc:
        raise SettingsError("PUBLIC_BASE_URL", expected)
    if parsed.query or parsed.fragment:
        raise SettingsError("PUBLIC_BASE_URL", expected)
    return value


def _approvers(env: Mapping[str, str]) -> tuple[str | None, frozenset[str]]:
    group = _guid(env, "APPROVER_GROUP_ID", required=False)
    listed: set[str] = set()
    for item in (_raw(env, "APPROVERS") or "").split(","):
        if item.strip():
            try:
                listed.add(str(uuid.UUID(item.strip())))
            except ValueError:
                raise SettingsError("APPROVERS", "a comma-separated list of Entra object ids (GUIDs)") from None
    if group is None and not listed:
        raise SettingsError("APPROVER_GROUP_ID", "a group object id, or APPROVERS with object ids", "is missing")
    return group, frozenset(listed)


def retirement_date(env: Mapping[str, str] | None = None) -> date | None:
    """BASIC_AUTH_RETIREMENT_DATE: no Basic exception runs past it. Read on its own by the CLI's grants,
    which need none of the other workflow settings."""
    return _date(os.environ if env is None else env, "BASIC_AUTH_RETIREMENT_DATE")


def _date(env: Mapping[str, str], name: str) -> date | None:
    value = _raw(env, name)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise SettingsError(name, "a date as YYYY-MM-DD") from None


def load_workflow_settings(env: Mapping[str, str] | None = None) -> WorkflowSettings:
    env = os.environ if env is None else env
    group, approvers = _approvers(env)
    teams = _raw(env, "TEAMS_WORKFLOW_URL")
    if teams is not None and not teams.startswith("https://"):
        raise SettingsError("TEAMS_WORKFLOW_URL", "the https:// URL of a Teams Workflows webhook")
    return WorkflowSettings(
        public_base_url=_public_base_url(env),
        notify_from=_mail_address(env, "NOTIFY_FROM"),
        approver_group_id=group,
        approvers=approvers,
        basic_auth_retirement_date=retirement_date(env),
        teams_workflow_url=teams,
        request_pending_days=_int(env, "REQUEST_PENDING_DAYS", DEFAULT_REQUEST_PENDING_DAYS, 1, 90),
        request_rate_limit_per_day=_int(env, "REQUEST_RATE_LIMIT_PER_DAY", DEFAULT_REQUEST_RATE_LIMIT_PER_DAY, 1, 1000),
        request_pending_per_requester=_int(
            env, "REQUEST_PENDING_PER_REQUESTER", DEFAULT_REQUEST_PENDING_PER_REQUESTER, 1, 100
        ),
    )


def _mail_address(env: Mapping[str, str], name: str) -> str:
    expected = "the mailbox address notifications are sent from, e.g. smtp-guard@contoso.com"
    value = _required(env, name, expected)
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        raise SettingsError(name, expected)
    return value.lower()


def easy_auth_enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return (env.get(EASY_AUTH_SETTING) or "").strip().lower() == "true"


def schedule(name: str) -> str:
    """The NCRONTAB for a timer, read at import so that a missing setting never breaks indexing."""
    return (os.environ.get(name) or "").strip() or DEFAULT_SCHEDULES[name]
