"""Input rules shared by the CLI and the HTTP API. Each rule raises InputError naming the field."""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum
from typing import Final, TypeVar

from shared.errors import InputError

# Deliberately narrower than RFC 5322: Exchange primary SMTP addresses are plain local@domain.
_ADDRESS: Final = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$")
MAX_ADDRESS: Final = 254

E = TypeVar("E", bound=StrEnum)


def mailbox_address(field: str, value: str | None) -> str:
    text = (value or "").strip()
    if not text:
        raise InputError(field, "is required")
    if len(text) > MAX_ADDRESS or not _ADDRESS.match(text) or ".." in text:
        raise InputError(field, f"{text[:80]!r} is not a valid email address")
    return text.lower()


def whole_number(field: str, value: str | int | None, low: int, high: int) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise InputError(field, f"must be a whole number from {low} to {high}") from None
    if not low <= number <= high:
        raise InputError(field, f"must be from {low} to {high}, not {number}")
    return number


def free_text(field: str, value: str | None, *, max_length: int, required: bool) -> str:
    text = (value or "").strip()
    if not text:
        if required:
            raise InputError(field, "is required")
        return ""
    if len(text) > max_length:
        raise InputError(field, f"is {len(text)} characters; the limit is {max_length}")
    if any(unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n\t" for ch in text):
        raise InputError(field, "contains control characters")
    return text


def choice(field: str, value: str | None, enum: type[E]) -> E:
    try:
        return enum((value or "").strip().lower())
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise InputError(field, f"must be one of: {allowed}") from None
