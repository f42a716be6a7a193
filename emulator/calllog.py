"""Call log: one entry per Exchange request and one per $batch sub-request, for tests and benchmarks."""

from __future__ import annotations

import threading
import time
from typing import Any

CallEntry = dict[str, Any]


def call_key(cmdlet: str | None, identity: str | None, filter_: str | None, page: str | None) -> str:
    """Stable id of a logical operation, so a retry of the same thing has the same key."""
    return f"{cmdlet or ''}|{identity or ''}|{filter_ or ''}|{page or ''}"


class CallLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[CallEntry] = []

    def record(
        self,
        *,
        kind: str,
        cmdlet: str | None,
        identity: str | None = None,
        filter_: str | None = None,
        page: str | None = None,
        status: int,
        retry_after: float | None = None,
        t: float | None = None,
        key: str | None = None,
    ) -> CallEntry:
        entry: CallEntry = {
            "t": time.monotonic() if t is None else t,  # arrival time on the server
            "t_end": time.monotonic(),
            "kind": kind,
            "cmdlet": cmdlet,
            "identity": identity,
            "filter": filter_,
            "page": page,
            "status": status,
            "retry_after": retry_after,
            "key": key if key is not None else call_key(cmdlet, identity, filter_, page),
        }
        with self._lock:
            self._entries.append(entry)
        return entry

    def entries(self) -> list[CallEntry]:
        with self._lock:
            return [dict(e) for e in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def count(self, cmdlet: str | None = None, kind: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for e in self._entries
                if (cmdlet is None or e["cmdlet"] == cmdlet) and (kind is None or e["kind"] == kind)
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
