"""Input rules shared by the CLI and the HTTP API. Each rule raises InputError naming the field."""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum
from typing import Final, TypeVar

from shared.errors import InputError

# Deliberately narrower than RFC 5322: Exchange primary SMTP addresses are plain local@domain. Only
# characters that Exchange reads literally in an -Identity are allowed: no `*` (a wildcard), no
# double quotes, braces, `|`, `=`, `?` or `%` (OPATH operators and escapes). An apostrophe (o'brien@)
# stays: addresses never go into a -Filter (see shared/microsoft/exchange.py).
_ADDRESS: Final = re.compile(r"^[A-Za-z0-9._+!#$&'^`~-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$", re.ASCII)
MAX_ADDRESS: Final = 254
_DIGITS: Final = re.compile(r"[0-9]{1,9}", re.ASCII)
# Line and paragraph breaks: a one-line field is shown and mailed as one line.
_LINE_BREAKS: Final = frozenset("\n\r\x0b\x0c\x85\u2028\u2029")

E = TypeVar("E", bound=StrEnum)


def mailbox_address(field: str, value: str | None) -> str:
    text = (value or "").strip()
    if not text:
        raise InputError(field, "is required")
    if len(text) > MAX_ADDRESS or not _ADDRESS.match(text) or ".." in text:
        raise InputError(field, f"{text[:80]!r} is not a valid email address")
    return text.lower()


def whole_number(field: str, value: str | int | None, low: int, high: int) -> int:
    """ASCII digits only: int() would also take `1_0`, `+5` and non-ASCII digits such as `٣`."""
    text = str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not _DIGITS.fullmatch(text):
        raise InputError(field, f"must be a whole number from {low} to {high}")
    number = int(text)
    if not low <= number <= high:
        raise InputError(field, f"must be from {low} to {high}, not {number}")
    return number


def free_text(field: str, value: str | None, *, max_length: int, required: bool, multiline: bool = False) -> str:
    """Trimmed text without control characters; one line unless `multiline` (which allows LF and tab)."""
    text = (value or "").strip()
    if multiline:
        text = text.replace("\r\n", "\n")  # browsers send a textarea's line breaks as CRLF
    if not text:
        if required:
            raise InputError(field, "is required")
        return ""
    if len(text) > max_length:
        raise InputError(field, f"is {len(text)} characters; the limit is {max_length}")
    if not multiline and any(ch in _LINE_BREAKS for ch in text):
        raise InputError(field, "must be one line")
    allowed = "\n\t" if multiline else "\t"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch not in allowed for ch in text):
        raise InputError(field, "contains control characters")
    return text


def choice(field: str, value: str | None, enum: type[E]) -> E:
    try:
        return enum((value or "").strip().lower())
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise InputError(field, f"must be one of: {allowed}") from None
