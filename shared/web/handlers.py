"""Handlers behind the HTTP functions: the request form and JSON API, status, approval, revoke, health.

Each takes an azure.functions.HttpRequest and returns an HttpResponse; `functions/` only routes.
Browsers get accessible HTML with inline field errors; API clients (JSON) get JSON.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, Final

import azure.functions as func

from shared.bootstrap import Clients, clients
from shared.errors import GuardError, NotInstalledError, Refusal, StoreError, WrongTenantError
from shared.model.clock import utc_now
from shared.model.exception_records import AuthMethod
from shared.model.principal import Principal
from shared.model.requests import AlternativesReason, RequestStatus, SenderKind
from shared.settings import SettingsError
from shared.web.body import is_json_body, read_input, wants_json
from shared.web.csrf import CSRF_FIELD, check_csrf, check_same_origin, csrf_token
from shared.web.principal import principal_from_headers
from shared.web.refusals import ANSWERED, http_error
from shared.web.responses import LINK_CODE_HEADERS, HttpError, html, json_response, redirect
from shared.workflow.grants import longest_days
from shared.workflow.requests import (
    FIELDS,
    decide,
    gather_evidence,
    grantable_days,
    is_approver,
    own_stake,
    public_request,
    revoke,
    submit_request,
    validate_request,
    viewable_request,
)

logger = logging.getLogger(__name__)

Handler = Callable[[func.HttpRequest, Principal, Clients], Awaitable[func.HttpResponse]]


def _error_response(req: func.HttpRequest, err: HttpError) -> func.HttpResponse:
    if wants_json(req):
        response = json_response({"error": err.message, "errors": err.errors}, err.status)
    else:
        response = html("message.html", err.status, title="Request refused", message=err.message, errors=err.errors)
    if err.retry_after is not None:
        response.headers["Retry-After"] = str(err.retry_after)
    return response


def endpoint(handler: Handler) -> Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]:
    """Signed-in callers only; turns refusals into 4xx answers and never leaks internals."""

    @wraps(handler)
    async def run(req: func.HttpRequest) -> func.HttpResponse:
        try:
            principal = principal_from_headers(req.headers)
            if principal is None:
                raise HttpError(401, "sign in first (App Service Authentication is required)")
            c = await clients()
            await c.require_installed()  # never act on a store that is not this tenant's
            return await handler(req, principal, c)
        except HttpError as err:
            return _error_response(req, err)
        except ANSWERED as err:
            return _error_response(req, http_error(err))
        except SettingsError as err:
            logger.error("SMTP AUTH Guard is misconfigured: %s", err)
            return _error_response(req, HttpError(503, "the service is not configured; an admin has been told"))
        except (NotInstalledError, WrongTenantError) as err:
            logger.error("SMTP AUTH Guard refused to use its store: %s", err)
            return _error_response(req, HttpError(503, "the service is not initialised; an admin has been told"))
        except GuardError as err:
            logger.error("SMTP AUTH Guard dependency failure: %s", err)
            return _error_response(req, HttpError(503, "a service this depends on is unavailable; try again later"))

    return run


def _route_id(req: func.HttpRequest) -> str:
    return (req.route_params.get("id") or "").lower()


async def _csrf(req: func.HttpRequest, principal: Principal, c: Clients) -> tuple[str, dict[str, str]]:
    """A CSRF token for this user's form, and its Set-Cookie header when a new one was made."""
    return csrf_token(req, c.workflow.public_base_url, await c.store.state.csrf_secret(), principal.object_id)


async def _check_post(req: func.HttpRequest, fields: dict[str, str], principal: Principal, c: Clients) -> None:
    """Every POST comes from our own origin; a form post also carries this user's CSRF token.

    JSON bodies need a CORS preflight cross-site, which is never allowed, so they need no token.
    """
    if is_json_body(req):
        check_same_origin(req, c.workflow.public_base_url)
    else:
        check_csrf(req, fields, c.workflow.public_base_url, await c.store.state.csrf_secret(), principal.object_id)


# -- the request form and submission ------------------------------------------------------------------------


def _form_context(c: Clients, principal: Principal, values: dict[str, str], errors: dict[str, str]) -> dict[str, Any]:
    return {
        "values": values,
        "errors": errors,
        "principal": principal,
        "sender_kinds": list(SenderKind),
        "alternatives": list(AlternativesReason),
        "auth_methods": list(AuthMethod),
        "max_days": c.settings.exception_max_days,
        "basic_max_days": longest_days(
            AuthMethod.BASIC, c.settings.exception_max_days, c.workflow.basic_auth_retirement_date, utc_now()
        ),
        "retirement": c.workflow.basic_auth_retirement_date,
        "csrf_field": CSRF_FIELD,
    }


@endpoint
async def request_form(req: func.HttpRequest, principal: Principal, c: Clients) -> func.HttpResponse:
    values = {name: req.params.get(name, "") for name in FIELDS}
    values["mailbox"] = values["mailbox"] or principal.upn
    token, cookie = await _csrf(req, principal, c)
    return html("form.html", 200, cookie, csrf=token, **_form_context(c, principal, values, {}))


@endpoint
async def submit(req: func.HttpRequest, principal: Principal, c: Clients) -> func.HttpResponse:
    fields = read_input(req)
    as_json = is_json_body(req)
    await _check_post(req, fields, principal, c)
    try:
        draft = validate_request(
            fields, principal, c.settings.exception_max_days, c.workflow.basic_auth_retirement_date, utc_now()
        )
        request = await submit_request(c, draft, principal, utc_now())
    except Refusal as refusal:
        if as_json:
            raise
        err = http_error(refusal)
        if "request_id" in err.errors:
            err.errors = {"mailbox": f"{err.message}: see /api/exceptions/{err.errors['request_id']}"}
        elif err.status == 409:
            err.errors = {"mailbox": err.message}
        values = {name: fields.get(name, "") for name in FIELDS}
        token, cookie = await _csrf(req, principal, c)
        context = _form_context(c, principal, values, err.errors or {"form": err.message})
        retry = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else {}
        return html("form.html", err.status, {**cookie, **retry}, csrf=token, **context)
    location = f"/api/exceptions/{request.id}"
    if as_json:
        return json_response(public_request(request), 201, {"Location": location})
    return redirect(location)


@endpoint
async def status(req: func.HttpRequest, principal: Principal, c: Clients) -> func.HttpResponse:
    request = await viewable_request(c, _route_id(req), principal)
    if wants_json(req):
        return json_response(public_request(request))
    return html("status.html", request=request)


# -- approval -----------------------------------------------------------------------------------------------


@endpoint
async def approval_page(req: func.HttpRequest, principal: Principal, c: Clients) -> func.HttpResponse:
    """GET (and HEAD): a confirmation page that changes nothing, so link scanners are harmless."""
    if not await is_approver(c, principal):
        raise HttpError(403, "only approvers may open approval links")
    loaded = await c.store.requests.get(_route_id(req))
    if loaded is None:
        raise HttpError(404, "no such request")
    request, _ = loaded
    now = utc_now()
    # The link's code is in the URL fragment, which never reaches a server: only the POST checks it.
    lapsed = request.status is RequestStatus.PENDING and now >= request.expires_at
    open_for_decision = request.status is RequestStatus.PENDING and not lapsed
    evidence = await gather_evidence(c, request, now) if open_for_decision else None
    csrf, cookie = await _csrf(req, principal, c)
    return html(
        "approval.html",
        200,
        {**LINK_CODE_HEADERS, **cookie},
        request=request,
        evidence=evidence,
        lapsed=lapsed,
        grantable=grantable_days(c, request, now),
        csrf=csrf,
        csrf_field=CSRF_FIELD,
        own_stake=own_stake(request, principal),
        retirement=c.workflow.basic_auth_retirement_date,
    )


@endpoint
async def approval_decision(req: func.HttpRequest, principal: Principal, c: Clients) -> func.HttpResponse:
    fields = read_input(req)
    await _check_post(req, fields, principal, c)
    result = await decide(c, _route_id(req), principal, fields.get("token"), fields, utc_now())  # never from a URL
    if wants_json(req):
        return json_response(
            {**public_request(result.request), "applied": result.applied, "apply_error": result.apply_error}
        )
    return html("decided.html", request=result.request, applied=result.applied, apply_error=result.apply_error)


@endpoint
async def revoke_exception(req: func.HttpRequest, principal: Principal, c: Clients) -> func.HttpResponse:
    fields = read_input(req) if req.get_body() else {}
    await _check_post(req, fields, principal, c)
    record = await revoke(c, _route_id(req), principal, utc_now())
    if wants_json(req):
        return json_response({"id": record.id, "mailbox_address": record.mailbox_address, "status": "revoked"})
    return html(
        "message.html",
        title="Exception revoked",
        errors={},
        message=f"The exception for {record.mailbox_address} ended now; SMTP AUTH is off again.",
    )


# -- health -------------------------------------------------------------------------------------------------


HEALTH_CACHE_SECONDS: Final = 5.0


async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Anonymous readiness: names a bad setting, says whether storage answers; no tenant data.

    Uses the worker's long-lived clients and keeps its answer for HEALTH_CACHE_SECONDS: probes are
    anonymous, so a burst of them must not cost a credential and a storage read each.
    """
    try:
        c = await clients()
    except SettingsError as err:
        return json_response({"status": "unhealthy", "checks": {"settings": str(err)}}, 503)
    async with c.health_lock:  # concurrent probes wait for the one check in flight
        if c.health is None or time.monotonic() - c.health[0] >= HEALTH_CACHE_SECONDS:
            c.health = (time.monotonic(), await _storage_check(c))
        storage, held = c.health[1]
    checks = {"settings": "ok", "storage": storage}
    healthy = storage == "ok"
    answer: dict[str, Any] = {"status": "ok" if healthy else "unhealthy", "checks": checks}
    if held is not None:  # that a hold stands, never who set it or why: the probe is anonymous
        answer["enforcement_hold"] = held
    return json_response(answer, 200 if healthy else 503)


async def _storage_check(c: Clients) -> tuple[str, bool | None]:
    try:
        current, held = await c.store.state.readiness(c.settings.tenant_id)
    except NotInstalledError:
        return "not initialised: run `python -m shared.cli init`", None
    except WrongTenantError:
        return "the install marker names another tenant", None
    except StoreError:
        return "unreachable", None
    if not current:
        return "needs an upgrade: run `python -m shared.cli init`", held
    return "ok", held
