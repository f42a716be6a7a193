"""The inventory's rows: which mailboxes have SMTP AUTH effectively on, and what uses it.

A mailbox's SMTP AUTH is effectively on when its own setting is `false`, or when it is `null` and
the organisation flag (`Get-TransportConfig`) is not `true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from shared.model.runs import tri_state
from shared.model.spreadsheet import spreadsheet_safe
from shared.model.usage import Protocol, SmtpUsage

COLUMNS: Final = (
    "mailbox",
    "mailbox_guid",
    "type",
    "setting",
    "effective",
    "exception",
    "signins",
    "last_signin",
    "ips",
    "failures",
    "protocol",
)


def effectively_on(setting: bool | None, org_disabled: bool | None) -> bool:
    """`setting` is the mailbox's SmtpClientAuthenticationDisabled, `org_disabled` the organisation's.

    Only `true` switches it off: an organisation flag that could not be read counts as on, as the
    sweeps count it.
    """
    return setting is False or (setting is None and org_disabled is not True)


@dataclass(frozen=True, slots=True)
class InventoryRow:
    mailbox: str
    mailbox_guid: str
    type: str  # RecipientTypeDetails
    setting: bool | None
    effective: bool
    exception: bool  # holds an active exception
    usage: SmtpUsage | None  # None when the sign-in logs could not be read
    protocol: Protocol | None  # from the usage report, when one was given

    @property
    def last_use(self) -> datetime | None:
        return self.usage.last_signin if self.usage else None


def as_json(row: InventoryRow) -> dict[str, Any]:
    usage = row.usage
    return {
        "mailbox": row.mailbox,
        "mailbox_guid": row.mailbox_guid,
        "type": row.type,
        "setting": row.setting,
        "effective": "on" if row.effective else "off",
        "exception": row.exception,
        "signins": usage.signins if usage else None,
        "last_signin": _iso(usage.last_signin) if usage else None,
        "ips": list(usage.ips) if usage else [],
        "failures": usage.failures if usage else None,
        "protocol": row.protocol.value if row.protocol else None,
    }


def as_csv(row: InventoryRow) -> list[str]:
    """The same columns as text: null as an empty cell, IPs separated by spaces, formulas neutralised."""
    cells: list[str] = []
    for key, value in as_json(row).items():
        if key == "setting":
            text = tri_state(value)
        elif isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, list):
            text = " ".join(value)
        else:
            text = "" if value is None else str(value)
        cells.append(spreadsheet_safe(text))
    return cells


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None
