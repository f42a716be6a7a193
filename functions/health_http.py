"""Anonymous readiness probe: settings and storage, no secrets and no tenant data."""

from __future__ import annotations

import azure.functions as func

bp = func.Blueprint()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    from shared.web.handlers import health as check

    return await check(req)
