"""Fault knobs: Exchange (latency, concurrency cap, random 429/503, broken cmdlets) and Graph (down, sendMail)."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Faults:
    """All off by default. Mutate in place (configure/reset) so every holder sees the change."""

    latency_ms: float = 0.0
    concurrency_limit: int = 0  # 0 = unlimited
    concurrency_retry_after: float | None = None  # real EXO sends none on this 429
    throttle_rate: float = 0.0
    retry_after_seconds: float = 1.0
    batch_item_throttle_rate: float = 0.0
    error_503_rate: float = 0.0
    failing_cmdlets: dict[str, int] = field(default_factory=dict)
    graph_down: bool = False  # every /graph route answers 503 + Retry-After: 1
    send_mail_failures: int = 0  # the next N sendMail calls answer 503 (counts down)
    rng_seed: int = 42
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _rng_lock: threading.Lock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.rng_seed)
        self._rng_lock = threading.Lock()

    @classmethod
    def knobs(cls) -> list[str]:
        return [f.name for f in fields(cls) if not f.name.startswith("_")]

    def configure(self, **values: Any) -> None:
        """Set the given knobs; unknown names raise, so a typo in a benchmark fails loudly."""
        unknown = set(values) - set(self.knobs())
        if unknown:
            raise ValueError(f"unknown fault knob(s): {', '.join(sorted(unknown))}")
        for name, value in values.items():
            setattr(self, name, _coerce(name, value))
        if "rng_seed" in values:
            self._rng = random.Random(self.rng_seed)

    def reset(self, **values: Any) -> None:
        """Back to all-off, then apply `values` (the semantics of PUT /_emulator/faults)."""
        defaults = Faults()
        for name in self.knobs():
            setattr(self, name, getattr(defaults, name))
        self._rng = random.Random(self.rng_seed)
        self.configure(**values)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.knobs()}

    def take_send_mail_failure(self) -> bool:
        """True (and one fewer left) if this sendMail call should fail."""
        with self._rng_lock:
            if self.send_mail_failures > 0:
                self.send_mail_failures -= 1
                return True
            return False

    def roll(self, rate: float) -> bool:
        """One seeded draw; deterministic for a given order of requests."""
        if rate <= 0:
            return False
        with self._rng_lock:
            return self._rng.random() < rate


_INTS = {"concurrency_limit", "rng_seed", "send_mail_failures"}
_FLOATS = {"latency_ms", "throttle_rate", "retry_after_seconds", "batch_item_throttle_rate", "error_503_rate"}


def _coerce(name: str, value: Any) -> Any:
    """Type-check knobs at the door (they arrive as JSON), so a bad value never reaches the hot path."""
    try:
        if name in _INTS:
            return int(value)
        if name in _FLOATS:
            return float(value)
        if name == "concurrency_retry_after":
            return None if value is None else float(value)
        if name == "graph_down":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if name == "failing_cmdlets":
            return {str(k): int(v) for k, v in dict(value or {}).items()}
    except (TypeError, ValueError):
        raise ValueError(f"bad value for {name}: {value!r}") from None
    return value
