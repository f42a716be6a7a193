"""The app's one exception hierarchy. Each error says what went wrong in a sentence an admin can act on."""

from __future__ import annotations

from collections.abc import Mapping


class GuardError(Exception):
    """Base for every error the app raises on purpose."""


class InputError(GuardError):
    """Bad input from a user or caller. Names the field; nothing was written."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class RefusedError(GuardError):
    """A safety rule stopped the run before any change (fail closed, cap, lease, stale plan)."""


class Refusal(GuardError):
    """A use case declined what a caller asked, and changed nothing. Only the web layer turns each
    kind into a status code (shared/web/refusals.py).

    `errors` holds a message per field for a form to show beside it; `retry_after` says, in seconds,
    when asking again can succeed.
    """

    def __init__(self, message: str, errors: Mapping[str, str] | None = None, retry_after: int | None = None) -> None:
        self.message = message
        self.errors = dict(errors or {})
        self.retry_after = retry_after
        super().__init__(message)


class InvalidFieldsError(Refusal):
    """Fields fail their checks: `errors` says what is wrong with each."""


class UnknownTargetError(Refusal):
    """A field is well formed but names something that does not exist (a mailbox, an owner)."""


class ForbiddenError(Refusal):
    """The signed-in caller may not do this."""


class NotFoundError(Refusal):
    """There is no such request or exception."""


class ConflictError(Refusal):
    """The current state does not allow it: already decided, already pending, decided by another."""


class DailyLimitError(Refusal):
    """Someone has already submitted as many requests today (UTC) as REQUEST_RATE_LIMIT_PER_DAY allows."""


class PendingLimitError(Refusal):
    """Someone already has as many pending requests as REQUEST_PENDING_PER_REQUESTER allows."""


class NotSwitchedOffError(GuardError):
    """An exception was revoked, but Exchange could not switch SMTP AUTH off at once; says who will."""


class NotYetStoredError(GuardError):
    """A notification's request is not stored yet: its submission is still being written. Retried."""


class StoreError(GuardError):
    """Table storage could not be read or written."""


class NotInstalledError(StoreError, RefusedError):
    """The install marker is missing: this store was never initialised with `init`."""


class WrongTenantError(StoreError, RefusedError):
    """The install marker names another tenant: this is the wrong store."""


class ExchangeError(GuardError):
    """The Exchange admin endpoint failed."""


class ExchangeCommandError(ExchangeError):
    """A cmdlet failed. `error_type` is the Exchange exception class, e.g. ManagementObjectNotFoundException."""

    def __init__(self, cmdlet: str, status: int, error_type: str, message: str) -> None:
        self.cmdlet = cmdlet
        self.status = status
        self.error_type = error_type
        self.message = message
        super().__init__(f"{cmdlet} failed with HTTP {status}: {error_type}: {message}")


class MailboxNotFoundError(ExchangeCommandError):
    """Exchange has no mailbox with that identity."""


class IncompleteListingError(ExchangeError):
    """A mailbox listing did not finish, so the plan cannot be trusted."""


def first_line(err: BaseException | str) -> str:
    """An error's first line, for one-line messages (SDK errors carry whole response dumps).

    An error with no message gives its class name; an empty string gives "".
    """
    lines = str(err).strip().splitlines()
    if lines:
        return lines[0]
    return type(err).__name__ if isinstance(err, BaseException) else ""
