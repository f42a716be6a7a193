"""CSV files that admins open and edit in spreadsheets: cells written safe, files read as Excel saves them.

A written cell that a spreadsheet would read as a formula is neutralised (OWASP's advice for CSV
injection): one starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`.
A file is read with or without a byte-order mark, separated by commas or semicolons (Excel writes
semicolons in many locales), with header names matched case-insensitively.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    return f"'{cell}" if cell.startswith(_FORMULA_STARTS) else cell


def unquote_safe(cell: str) -> str:
    """A cell as written by spreadsheet_safe, read back: the `'` before a formula-like start goes."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_STARTS) else cell


@dataclass(frozen=True, slots=True)
class Table:
    columns: tuple[str, ...]  # the header's names, stripped and lower-cased, in file order
    rows: list[tuple[int, dict[str, str]]]  # (line number in the file, cells by lower-cased column name)

    def has(self, column: str) -> bool:
        return column in self.columns


def read_table(text: str) -> Table:
    """Parse a CSV file whose first line is its header. Blank lines are skipped; each row keeps the
    number of the line it starts on (a quoted cell may span lines). ValueError for a broken file."""
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), dialect="excel", delimiter=_delimiter(text))
    header = next(reader, [])
    columns = tuple(name.strip().lower() for name in header)
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for line, values in _numbered(reader):
            if any(v.strip() for v in values):
                rows.append((line, {c: (values[i].strip() if i < len(values) else "") for i, c in enumerate(columns)}))
    except csv.Error as err:  # an unclosed quote swallows the rest of the file, say
        raise ValueError(f"not a readable CSV file after line {reader.line_num}: {err}") from None
    return Table(columns, rows)


def _numbered(reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str]]]:
    ended = reader.line_num  # type: ignore[attr-defined]  # the line the header ended on
    for values in reader:
        yield ended + 1, values
        ended = reader.line_num  # type: ignore[attr-defined]


def _delimiter(text: str) -> str:
    """Comma or semicolon, told from the header line; the rest is Excel's dialect (`""` in quotes)."""
    first = text.split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(first, delimiters=",;").delimiter
    except csv.Error:
        return ","
