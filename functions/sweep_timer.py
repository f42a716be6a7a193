"""Incremental sweep every 15 minutes: mailboxes provisioned or changed since the last finished sweep."""

from __future__ import annotations

import azure.functions as func

from shared.settings import schedule

bp = func.Blueprint()


@bp.timer_trigger(schedule=schedule("SWEEP_SCHEDULE"), arg_name="timer", run_on_startup=False, use_monitor=True)
async def incremental_sweep(timer: func.TimerRequest) -> None:
    from shared.sweep.engine import run_scheduled  # imported here to keep host indexing and cold start light

    await run_scheduled(full=False)
