"""The audit export's format: one record per change, the same columns in JSON and CSV.

CSV cells that a spreadsheet would read as a formula are neutralised (shared.model.spreadsheet).
"""

from __future__ import annotations

from typing import Any, Final

from shared.model.runs import AuditedChange, tri_state
from shared.model.spreadsheet import spreadsheet_safe

COLUMNS: Final = ("run_id", "at", "mailbox", "mailbox_guid", "before", "after", "reason", "actor", "recovered")


def as_json(change: AuditedChange) -> dict[str, Any]:
    """`before` and `after` are JSON true/false/null; `at` is ISO 8601 in UTC."""
    return {
        "run_id": change.run_id,
        "at": change.at.isoformat().replace("+00:00", "Z"),
        "mailbox": change.mailbox,
        "mailbox_guid": change.mailbox_guid,
        "before": change.before,
        "after": change.after,
        "reason": change.reason,
        "actor": change.actor,
        "recovered": change.recovered,
    }


def as_csv(change: AuditedChange) -> list[str]:
    """The same columns as text: true/false/null as JSON spells them; formula-like cells neutralised."""
    record = as_json(change)
    cells = [
        tri_state(v) if k in ("before", "after") else str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in record.items()
    ]
    return [spreadsheet_safe(cell) for cell in cells]
