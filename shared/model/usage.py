"""Evidence of SMTP AUTH use, as plain rules: what counts as use, and how the usage report is read.

Sign-ins under the client app `Authenticated SMTP` are Basic SMTP AUTH (Microsoft lists it among
the legacy authentication clients; OAuth SMTP does not show there). Only a sign-in with error code
0 is use: failures (50126 bad password, 50053 locked out, ...) are mostly password spray, so they
are counted apart and never make a mailbox "used".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from shared.model.spreadsheet import read_table, unquote_safe

SMTP_CLIENT_APP: Final = "Authenticated SMTP"
SIGN_IN_DAYS_MAX: Final = 30  # how far back Entra keeps sign-in logs


@dataclass(frozen=True, slots=True)
class SignIn:
    at: datetime
    ip_address: str
    client_app: str
    error_code: int  # 0 is a success
    user_id: str = ""
    user_principal_name: str = ""

    @property
    def succeeded(self) -> bool:
        return self.error_code == 0


@dataclass(frozen=True, slots=True)
class SmtpUsage:
    """One mailbox's Basic SMTP AUTH sign-ins in a window: successes (use) and failures apart."""

    signins: int
    last_signin: datetime | None
    ips: tuple[str, ...]  # distinct client IPs of the successful sign-ins, most recent first
    failures: int
    last_failure: datetime | None

    @property
    def used(self) -> bool:
        return self.signins > 0


NO_USE: Final = SmtpUsage(0, None, (), 0, None)


def tally(sign_ins: Iterable[SignIn]) -> SmtpUsage:
    """Count one mailbox's SMTP sign-ins; sign-ins of any other client app are not counted."""
    sign_ins = list(sign_ins)
    ok = sorted((s for s in sign_ins if s.client_app == SMTP_CLIENT_APP and s.succeeded), key=lambda s: s.at)
    failed = [s for s in sign_ins if s.client_app == SMTP_CLIENT_APP and not s.succeeded]
    ips = tuple(dict.fromkeys(s.ip_address for s in reversed(ok) if s.ip_address))
    return SmtpUsage(
        signins=len(ok),
        last_signin=ok[-1].at if ok else None,
        ips=ips,
        failures=len(failed),
        last_failure=max((s.at for s in failed), default=None),
    )


def by_user(sign_ins: Iterable[SignIn]) -> dict[str, list[SignIn]]:
    """Sign-ins under both keys a mailbox is matched by: its user's object id and UPN (lower case)."""
    keyed: dict[str, list[SignIn]] = {}
    for sign_in in sign_ins:
        for key in {sign_in.user_id.lower(), sign_in.user_principal_name.lower()} - {""}:
            keyed.setdefault(key, []).append(sign_in)
    return keyed


def sign_ins_of(keyed: Mapping[str, list[SignIn]], *keys: str) -> list[SignIn]:
    """A mailbox's sign-ins from `by_user`'s map (by object id, UPN or address), each once, newest first."""
    found = {id(s): s for key in {k.lower() for k in keys} - {""} for s in keyed.get(key, [])}
    return sorted(found.values(), key=lambda s: s.at, reverse=True)


# -- The Exchange admin center's SMTP AUTH clients report (Reports > Mail flow), exported as CSV ----


class Protocol(StrEnum):
    BASIC = "basic"
    OAUTH = "oauth"
    BOTH = "both"


# The report's columns as Microsoft documents them ("Sender address", "Messages sent"), and the
# authentication protocol column added in October 2024 under the names it has been exported with.
SENDER_COLUMNS: Final = ("sender address", "sender", "senderaddress")
PROTOCOL_COLUMNS: Final = ("authentication protocol", "auth protocol", "authentication", "protocol")
_PROTOCOL_VALUES: Final = {"basic": Protocol.BASIC, "basic auth": Protocol.BASIC, "oauth": Protocol.OAUTH}
_PROTOCOL_VALUES |= {"oauth2": Protocol.OAUTH, "oauth 2.0": Protocol.OAUTH, "modern": Protocol.OAUTH}


class LayoutError(ValueError):
    """A file that is not what it was given as; the message names the columns expected (or why it
    could not be read at all)."""


def read_usage_report(text: str) -> dict[str, Protocol]:
    """The protocol per sender (lower-cased address) of an exported SMTP AUTH clients report.

    A sender listed once per protocol is `both`.
    """
    try:
        table = read_table(text)
    except ValueError as err:
        raise LayoutError(str(err)) from None
    sender = next((c for c in SENDER_COLUMNS if table.has(c)), None)
    protocol = next((c for c in PROTOCOL_COLUMNS if table.has(c)), None)
    if sender is None or protocol is None:
        raise LayoutError(
            "not an SMTP AUTH clients report: expected the columns 'Sender address' and 'Authentication protocol' "
            f"(found {', '.join(table.columns) or 'none'})"
        )
    seen: dict[str, set[Protocol]] = {}
    for _, row in table.rows:
        address = unquote_safe(row[sender]).lower()
        value = _PROTOCOL_VALUES.get(row[protocol].lower())
        if address and value is not None:
            seen.setdefault(address, set()).add(value)
    return {a: next(iter(p)) if len(p) == 1 else Protocol.BOTH for a, p in seen.items()}
