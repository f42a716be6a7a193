"""The one backoff formula: exponential from a first wait, capped, with optional "equal jitter".

Used by the Exchange pipeline's retry policy, by the re-batching of throttled Set-CASMailbox items,
and by the notification outbox. A Retry-After sent by the service always wins over it.
"""

from __future__ import annotations

import random


def exponential(attempt: int, first: float, most: float) -> float:
    """The ceiling of the wait after the `attempt`-th failure (from 1): `first`, doubling, at most `most`."""
    return min(most, first * 2 ** (max(attempt, 1) - 1))


def jittered(attempt: int, first: float, most: float) -> float:
    """A wait between half the ceiling and the ceiling, so workers throttled together spread out."""
    ceiling = exponential(attempt, first, most)
    return random.uniform(ceiling / 2, ceiling)
