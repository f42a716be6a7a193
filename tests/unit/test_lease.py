"""The sweep lease as the run holding it sees it: held while renewed in time, never once lost."""

from __future__ import annotations

import time
from datetime import timedelta

from shared.storage import Lease


def test_an_unrenewed_lease_stops_counting_as_held_a_beat_before_it_lapses() -> None:
    lease = Lease(timedelta(seconds=0.4))
    assert lease.held
    time.sleep(0.31)  # past 0.4 - 0.4/4: another run could take it over at the next beat
    assert not lease.held
    lease.renewed(time.monotonic())
    assert lease.held


def test_a_lease_taken_over_is_never_held_again() -> None:
    lease = Lease(timedelta(seconds=60))
    lease.lost = True
    lease.renewed(time.monotonic())
    assert not lease.held
