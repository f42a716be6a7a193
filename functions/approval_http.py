"""Approval links. GET (and HEAD, which link scanners send) only shows a confirmation page; the
decision is a POST from that page's buttons."""

from __future__ import annotations

import azure.functions as func

bp = func.Blueprint()
ANONYMOUS = func.AuthLevel.ANONYMOUS


@bp.route(route="approvals/{id:guid}", methods=["GET", "HEAD"], auth_level=ANONYMOUS)
async def approval_page(req: func.HttpRequest) -> func.HttpResponse:
    from shared.web.handlers import approval_page as page

    return await page(req)


@bp.route(route="approvals/{id:guid}", methods=["POST"], auth_level=ANONYMOUS)
async def approval_decision(req: func.HttpRequest) -> func.HttpResponse:
    from shared.web.handlers import approval_decision as decision

    return await decision(req)
