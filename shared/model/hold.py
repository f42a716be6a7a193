"""The enforcement hold: an admin's brake that stops every sweep from applying anything until resumed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Hold:
    held_by: str  # who paused: the actor as the audit trail names it
    reason: str
    held_at: datetime

    def describe(self) -> str:
        return f"enforcement is paused by {self.held_by} since {self.held_at:%Y-%m-%d %H:%M}Z: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"held_by": self.held_by, "reason": self.reason, "held_at": self.held_at.isoformat()}
