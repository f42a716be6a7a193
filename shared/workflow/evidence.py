"""Usage evidence, read one way by every reader: the inventory, the import, the approval page and a
mailbox's history (the rules of what counts as use are in shared.model.usage).

Sign-ins come from Graph's `auditLogs/signIns` (AuditLog.Read.All and Entra ID P1). When they cannot
be read, the evidence says why once and every reader carries on without it. The protocol per sender
comes from the last SMTP AUTH clients report an admin merged (`inventory --usage-csv`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.errors import InputError
from shared.microsoft.graph import GraphClient
from shared.model.usage import (
    SIGN_IN_DAYS_MAX,
    LayoutError,
    Protocol,
    SignIn,
    SmtpUsage,
    by_user,
    read_usage_report,
    sign_ins_of,
    tally,
)


@dataclass(frozen=True, slots=True)
class SignInEvidence:
    """Basic SMTP AUTH sign-ins since `since`, by user; or, in `unavailable`, why there are none to read."""

    since: datetime
    keyed: dict[str, list[SignIn]] = field(default_factory=dict)
    unavailable: str = ""

    def of(self, *keys: str) -> list[SignIn]:
        """A mailbox's sign-ins, newest first, by any of its keys: user object id, UPN, address."""
        return sign_ins_of(self.keyed, *keys)

    def usage(self, *keys: str) -> SmtpUsage | None:
        """A mailbox's use and failures in the window; None when the log could not be read."""
        return None if self.unavailable else tally(self.of(*keys))


def sign_in_days(value: str | int | None) -> int:
    """The window in days: 1..30, the most Entra keeps."""
    try:
        days = int(value) if value is not None else SIGN_IN_DAYS_MAX
    except ValueError:
        raise InputError("days", f"must be a whole number of days, not {str(value)[:20]!r}") from None
    if not 1 <= days <= SIGN_IN_DAYS_MAX:
        raise InputError("days", f"must be between 1 and {SIGN_IN_DAYS_MAX} (sign-in logs go back 30 days)")
    return days


async def read_sign_ins(
    graph: GraphClient, now: datetime, days: int, *, user_id: str = "", upn: str = ""
) -> SignInEvidence:
    """Every Basic SMTP AUTH sign-in of the last `days` days: of the tenant, or of one user, found by
    its object id when known, else by UPN (all pages)."""
    since = now - timedelta(days=days)
    read = await graph.smtp_sign_ins(since, user_id=user_id, upn=upn)
    if read.unavailable:
        return SignInEvidence(since, unavailable=f"sign-in logs {read.unavailable}")
    return SignInEvidence(since, by_user(read.value))


def usage_report(text: str) -> dict[str, Protocol]:
    """An exported SMTP AUTH clients report: the protocol per sender; InputError for another file."""
    try:
        return read_usage_report(text)
    except LayoutError as err:
        raise InputError("usage-csv", str(err)) from None
