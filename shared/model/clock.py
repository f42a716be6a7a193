"""The one clock. Code that decides by time takes a `Clock` (tests pass a fixed one); code that only
stamps a record calls `utc_now`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Now, timezone-aware in UTC: Table Storage and Exchange both speak UTC."""
    return datetime.now(UTC)
