"""The one table from a use case's refusal to the HTTP status the API answers with."""

from __future__ import annotations

from typing import Final

from shared.errors import (
    ConflictError,
    DailyLimitError,
    ForbiddenError,
    GuardError,
    InvalidFieldsError,
    NotFoundError,
    NotSwitchedOffError,
    PendingLimitError,
    Refusal,
    UnknownTargetError,
)
from shared.web.responses import HttpError

STATUS: Final[dict[type[GuardError], int]] = {
    InvalidFieldsError: 400,
    ForbiddenError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    UnknownTargetError: 422,
    DailyLimitError: 429,
    PendingLimitError: 429,
    NotSwitchedOffError: 502,  # the revocation stands; the switch-off did not happen yet
}
ANSWERED: Final = (Refusal, NotSwitchedOffError)  # what a handler answers itself, message and all


def http_error(err: Refusal | NotSwitchedOffError) -> HttpError:
    status = next(code for kind, code in STATUS.items() if isinstance(err, kind))
    if isinstance(err, Refusal):
        return HttpError(status, err.message, err.errors, err.retry_after)
    return HttpError(status, str(err))
