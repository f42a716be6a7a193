"""Workflow timers: the notification outbox (every 2 minutes) and the daily lifecycle run."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.settings import schedule

bp = func.Blueprint()
logger = logging.getLogger(__name__)


@bp.timer_trigger(schedule=schedule("OUTBOX_SCHEDULE"), arg_name="timer", run_on_startup=False, use_monitor=True)
async def send_notifications(timer: func.TimerRequest) -> None:
    from shared.bootstrap import clients
    from shared.workflow.notifications import send_due

    report = await send_due(await clients())
    logger.info("SMTP AUTH Guard outbox: %s", report)


@bp.timer_trigger(schedule=schedule("LIFECYCLE_SCHEDULE"), arg_name="timer", run_on_startup=False, use_monitor=True)
async def exception_lifecycle(timer: func.TimerRequest) -> None:
    from shared.bootstrap import clients
    from shared.workflow.lifecycle import run_lifecycle

    report = await run_lifecycle(await clients())
    logger.info("SMTP AUTH Guard lifecycle: %s", report)
