"""Usage evidence, read one way by every reader: the inventory, the import, the approval page and a
mailbox's history (the rules of what counts as use are in shared.model.usage).

Sign-ins come from Graph's `auditLogs/signIns` (AuditLog.Read.All and Entra ID P1). When they cannot
be read, the evidence says why once and every reader carries on without it. The protocol per sender
comes from the last SMTP AUTH clients report an admin merged (`inventory --usage-csv`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from shared.errors import InputError
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

FAILURE_PAGES: Final = 5  # failed sign-ins read at most, in pages of 1,000

if TYPE_CHECKING:  # msgraph-sdk is large: only the commands that read Graph import it
    from shared.microsoft.graph import GraphClient


@dataclass(frozen=True, slots=True)
class SignInEvidence:
    """Basic SMTP AUTH sign-ins since `since`, by user; or, in `unavailable`, why there are none to read."""

    since: datetime
    keyed: dict[str, list[SignIn]] = field(default_factory=dict)
    unavailable: str = ""
    failures_capped: bool = False  # more failures than FAILURE_PAGES hold: failure counts are lower bounds

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
    """The Basic SMTP AUTH sign-ins of the last `days` days, of the tenant or of one user (found by its
    object id when known, else by UPN): every success, and the newest FAILURE_PAGES pages of failures."""
    since = now - timedelta(days=days)
    user = {"user_id": user_id, "upn": upn}
    # Successes are use: every page. Failures are mostly password spray, which can fill the log:
    # read apart, and only so far.
    uses, failures = await asyncio.gather(
        graph.smtp_sign_ins(since, succeeded=True, **user),
        graph.smtp_sign_ins(since, succeeded=False, max_pages=FAILURE_PAGES, **user),
    )
    for read in (uses, failures):
        if read.unavailable:
            return SignInEvidence(since, unavailable=f"sign-in logs {read.unavailable}")
    return SignInEvidence(since, by_user([*uses.value, *failures.value]), failures_capped=not failures.complete)


def usage_report(text: str) -> dict[str, Protocol]:
    """An exported SMTP AUTH clients report: the protocol per sender; InputError for another file."""
    try:
        return read_usage_report(text)
    except LayoutError as err:
        raise InputError("usage-csv", str(err)) from None
