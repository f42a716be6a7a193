"""A subset of Exchange OPATH (-Filter): `Prop -op 'value'` clauses, -and/-or/-not, parentheses."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from .tenant import MAILBOX_TYPES, Mailbox

Predicate = Callable[[Mailbox], bool]


class FilterError(ValueError):
    """The filter can't be parsed or names a property that can't be filtered."""


_DATE_PROPS: dict[str, Callable[[Mailbox], datetime]] = {
    "whencreated": lambda m: m.when_created,
    "whencreatedutc": lambda m: m.when_created,
    "whenchanged": lambda m: m.when_changed,
    "whenchangedutc": lambda m: m.when_changed,
    "whenmailboxcreated": lambda m: m.when_mailbox_created,
}
_STRING_PROPS: dict[str, Callable[[Mailbox], str]] = {
    "primarysmtpaddress": lambda m: m.primary_smtp_address,
    "userprincipalname": lambda m: m.user_principal_name,
    "recipienttypedetails": lambda m: m.recipient_type_details,
    "displayname": lambda m: m.display_name,
    "name": lambda m: m.alias,
    "alias": lambda m: m.alias,
    "externaldirectoryobjectid": lambda m: m.external_directory_object_id,
    "guid": lambda m: m.guid,
}
# Properties EXO has but does not let you filter on; named so the error says so.
_NOT_FILTERABLE = {"smtpclientauthenticationdisabled"}

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lp>\() | (?P<rp>\)) |
        (?P<op>-(?:and|or|not|eq|ne|lt|le|gt|ge|like|notlike)\b) |
        '(?P<sq>(?:[^']|'')*)' | "(?P<dq>(?:[^"]|"")*)" |
        (?P<word>[^\s()'"]+)
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "-eq": operator.eq,
    "-ne": operator.ne,
    "-lt": operator.lt,
    "-le": operator.le,
    "-gt": operator.gt,
    "-ge": operator.ge,
}
_US_FORMATS = ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y")


def parse_date(text: str) -> datetime:
    """en-US 'M/d/yyyy H:mm:ss' or ISO 8601; naive values are UTC (EXO servers run in UTC)."""
    text = text.strip()
    for fmt in _US_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(f"'{text}' is not a valid date") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f'Invalid filter syntax. "{text}" at position {pos + 1}.')
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "sq":
            kind, value = "str", value.replace("''", "'")
        elif kind == "dq":
            kind, value = "str", value.replace('""', '"')
        elif kind == "op":
            value = value.lower()
        out.append((kind, value))
    return out


class _Parser:
    def __init__(self, text: str, allowed: frozenset[str]) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.allowed = allowed

    def _peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _next(self) -> tuple[str, str]:
        tok = self._peek()
        if tok is None:
            raise FilterError(f'Invalid filter syntax. Unexpected end of filter "{self.text}".')
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        pred = self._or()
        if self._peek() is not None:
            raise FilterError(f'Invalid filter syntax. Unexpected "{self._peek()[1]}" in "{self.text}".')  # type: ignore[index]
        return pred

    def _or(self) -> Predicate:
        return self._joined("-or", self._and, any)

    def _and(self) -> Predicate:
        return self._joined("-and", self._factor, all)

    def _joined(
        self, op: str, operand: Callable[[], Predicate], combine: Callable[[Iterable[bool]], bool]
    ) -> Predicate:
        """`operand (op operand)*`: one operand as it is, more combined with any (-or) or all (-and)."""
        parts = [operand()]
        while self._peek() == ("op", op):
            self.i += 1
            parts.append(operand())
        return parts[0] if len(parts) == 1 else lambda m: combine(p(m) for p in parts)

    def _factor(self) -> Predicate:
        kind, value = self._next()
        if (kind, value) == ("op", "-not"):
            inner = self._factor()
            return lambda m: not inner(m)
        if kind == "lp":
            inner = self._or()
            if self._next()[0] != "rp":
                raise FilterError(f'Invalid filter syntax. Missing ")" in "{self.text}".')
            return inner
        if kind != "word":
            raise FilterError(f'Invalid filter syntax. Expected a property name, got "{value}" in "{self.text}".')
        return self._clause(value)

    def _clause(self, prop: str) -> Predicate:
        key = prop.lower()
        if key in _NOT_FILTERABLE:
            raise FilterError(f"The property '{prop}' is not filterable.")
        if key not in self.allowed:
            raise FilterError(f"'{prop}' is not a recognized filterable property.")
        op_kind, op = self._next()
        if op_kind != "op" or op in ("-and", "-or", "-not"):
            raise FilterError(f'Invalid filter syntax. Expected an operator after "{prop}" in "{self.text}".')
        val_kind, raw = self._next()
        if val_kind not in ("str", "word"):
            raise FilterError(f'Invalid filter syntax. Expected a value after "{prop} {op}" in "{self.text}".')
        if key in _DATE_PROPS:
            get_date = _DATE_PROPS[key]
            if op not in _CMP:
                raise FilterError(f"The operator '{op}' can't be used with the date property '{prop}'.")
            when = parse_date(raw)
            cmp_date = _CMP[op]
            return lambda m: cmp_date(get_date(m), when)
        get_str = _STRING_PROPS[key]
        target = raw.lower()
        if key == "recipienttypedetails" and "*" not in target and target not in {t.lower() for t in MAILBOX_TYPES}:
            raise FilterError(f"'{raw}' is not a valid value for RecipientTypeDetails.")
        if op in ("-like", "-notlike"):
            rx = re.compile("^" + ".*".join(re.escape(p) for p in target.split("*")) + "$")
            want = op == "-like"
            return lambda m: (rx.match(get_str(m).lower()) is not None) == want
        cmp_str = _CMP[op]
        return lambda m: cmp_str(get_str(m).lower(), target)


def compile_filter(text: str, *, mailbox_created: bool) -> Predicate:
    """Compile once per request. `mailbox_created`: the cmdlet exposes WhenMailboxCreated."""
    allowed = set(_DATE_PROPS) | set(_STRING_PROPS)
    if not mailbox_created:
        allowed.discard("whenmailboxcreated")
    return _Parser(text, frozenset(allowed)).parse()
