"""Per-worker hints of where a free numbered row likely is, so the usual insert needs no read first."""

from __future__ import annotations

from typing import Final, Generic, TypeVar

MAX_REMEMBERED: Final = 10_000  # keys per worker: past this the hints start over

V = TypeVar("V")


class Hints(Generic[V]):
    """A bounded map of hints. Only ever a hint: forgetting one costs a read, never a wrong answer."""

    def __init__(self) -> None:
        self._hints: dict[str, V] = {}

    def get(self, key: str, default: V) -> V:
        return self._hints.get(key, default)

    def remember(self, key: str, hint: V) -> None:
        if len(self._hints) >= MAX_REMEMBERED:
            self._hints.clear()
        self._hints[key] = hint
