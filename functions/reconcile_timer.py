"""Daily full reconcile: every mailbox, catching drift, expired exceptions and missed work."""

from __future__ import annotations

import azure.functions as func

from shared.settings import schedule

bp = func.Blueprint()


@bp.timer_trigger(schedule=schedule("RECONCILE_SCHEDULE"), arg_name="timer", run_on_startup=False, use_monitor=True)
async def full_reconcile(timer: func.TimerRequest) -> None:
    from shared.sweep.engine import run_scheduled  # imported here to keep host indexing and cold start light

    await run_scheduled(full=True)
