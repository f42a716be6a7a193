"""Exception requests over HTTP: the form, the JSON API, the status page, and revoke.

Auth level is anonymous: App Service Authentication (Easy Auth) signs users in and the app checks
who they are (shared/web/principal.py). Handlers are imported on first call to keep indexing light.
"""

from __future__ import annotations

import azure.functions as func

bp = func.Blueprint()
ANONYMOUS = func.AuthLevel.ANONYMOUS


@bp.route(route="exceptions/new", methods=["GET"], auth_level=ANONYMOUS)
async def exception_form(req: func.HttpRequest) -> func.HttpResponse:
    from shared.web.handlers import request_form

    return await request_form(req)


@bp.route(route="exceptions", methods=["POST"], auth_level=ANONYMOUS)
async def exception_submit(req: func.HttpRequest) -> func.HttpResponse:
    from shared.web.handlers import submit

    return await submit(req)


@bp.route(route="exceptions/{id:guid}", methods=["GET"], auth_level=ANONYMOUS)
async def exception_status(req: func.HttpRequest) -> func.HttpResponse:
    from shared.web.handlers import status

    return await status(req)


@bp.route(route="exceptions/{id:guid}/revoke", methods=["POST"], auth_level=ANONYMOUS)
async def exception_revoke(req: func.HttpRequest) -> func.HttpResponse:
    from shared.web.handlers import revoke_exception

    return await revoke_exception(req)
