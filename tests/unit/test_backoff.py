"""The one backoff formula, as every retry in the app uses it."""

from __future__ import annotations

from datetime import timedelta

from shared.microsoft.exchange import BACKOFF_FIRST, BACKOFF_MOST, ExchangeRetryPolicy
from shared.model.backoff import exponential, jittered
from shared.workflow.notifications import MAX_DELAY, retry_delay


def test_the_wait_doubles_from_the_first_and_stops_at_the_most() -> None:
    assert [exponential(n, 0.5, 3.0) for n in range(0, 6)] == [0.5, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_stays_between_half_the_ceiling_and_the_ceiling() -> None:
    waits = [jittered(4, 0.5, 20.0) for _ in range(500)]
    assert min(waits) >= 2.0 and max(waits) <= 4.0
    assert len({round(w, 3) for w in waits}) > 100  # spread out, not one value


def test_the_exchange_pipeline_backs_off_by_the_same_formula() -> None:
    policy = ExchangeRetryPolicy()
    settings = {"history": [object()] * 3, "backoff": BACKOFF_FIRST, "max_backoff": BACKOFF_MOST}
    waits = [policy.get_backoff_time(settings) for _ in range(200)]
    assert min(waits) >= 1.0 and max(waits) <= 2.0  # third attempt: ceiling 0.5 * 2**2
    settings["history"] = [object()] * 30
    assert max(policy.get_backoff_time(settings) for _ in range(200)) <= BACKOFF_MOST


def test_the_outbox_retries_after_a_minute_doubling_to_an_hour() -> None:
    assert [retry_delay(n) for n in (0, 1, 2, 3)] == [timedelta(minutes=m) for m in (1, 1, 2, 4)]
    assert retry_delay(20) == MAX_DELAY
