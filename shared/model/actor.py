"""Who made a change, as the audit trail records it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: the caller's object id and app id, taken from its token."""

    object_id: str
    app_id: str

    def __str__(self) -> str:
        return self.object_id or self.app_id or "unknown"
