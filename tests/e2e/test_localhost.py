"""The local Functions host: routing, invocation, timers and Easy Auth, against a throwaway app."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import azure.functions as func
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from devservices.easyauth import (
    CLAIM_OID,
    CLAIM_TID,
    KEEP_FRAGMENT_SCRIPT,
    SESSION_COOKIE,
    EasyAuthUser,
    safe_redirect,
)
from devservices.indexing import REPO
from devservices.localhost import HostError, LocalHost, RouteTemplate
from devservices.routes import SUPPORTED, RouteError

ALICE = {
    "id": "6f1c1a52-1f4e-4c7e-9a53-0d7f1a1b2c3d",
    "userPrincipalName": "alice@contoso.test",
    "displayName": "Alice Admin",
    "tenantId": "8a9b0c1d-2e3f-4a5b-8c6d-7e8f9a0b1c2d",
}
BOB = {"id": "0b2d4f6a-8c0e-4a2b-9d4f-6a8c0e2a4b6d", "userPrincipalName": "bob@contoso.test", "displayName": "Bob"}
GUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
TICKED = threading.Event()


def _json(body: Any, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


def build_app(timer_calls: list[func.TimerRequest]) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="echo", methods=["GET", "POST"])
    async def echo(req: func.HttpRequest) -> func.HttpResponse:
        return _json(
            {
                "method": req.method,
                "url": req.url,
                "headers": dict(req.headers),
                "params": dict(req.params),
                "body_length": len(req.get_body()),
                "thread": threading.current_thread().name,
            }
        )

    @app.route(route="health", methods=["GET"], trigger_arg_name="request")
    def health(request: func.HttpRequest) -> func.HttpResponse:  # a sync function, its argument not named req
        return _json({"headers": dict(request.headers), "thread": threading.current_thread().name})

    @app.route(route="items/{id:guid}", methods=["GET"])
    async def item_by_id(req: func.HttpRequest) -> func.HttpResponse:
        return _json({"route": "by_id", "id": req.route_params["id"]})

    @app.route(route="items/new", methods=["GET"])
    def item_new(req: func.HttpRequest) -> func.HttpResponse:
        return _json({"route": "new"})

    @app.route(route="people/{name}/items/{id:GUID}", methods=["GET"])  # constraint names ignore case
    def person_item(req: func.HttpRequest) -> func.HttpResponse:
        return _json(dict(req.route_params))

    @app.route(route="boom")
    def boom(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("secret detail of the failure")

    @app.route(route="cookies", methods=["GET"])
    def cookies(req: func.HttpRequest) -> func.HttpResponse:
        response = func.HttpResponse("<p>hi</p>", mimetype="text/html", charset="utf-8")
        response.headers.add("Set-Cookie", "a=1; Path=/; HttpOnly")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        response.headers["X-Custom"] = "yes"
        return response

    @app.route(route="text", methods=["GET"])
    def text(req: func.HttpRequest) -> str:
        return "plain"

    @app.timer_trigger(schedule="0 0 * * * *", arg_name="timer", run_on_startup=False)
    async def tick(timer: func.TimerRequest) -> None:
        timer_calls.append(timer)
        TICKED.set()

    @app.timer_trigger(schedule="0 0 * * * *", arg_name="timer", run_on_startup=False)
    def broken_timer(timer: func.TimerRequest) -> None:
        raise ValueError("timer failed")

    return app


@pytest.fixture(scope="module")
def timer_calls() -> list[func.TimerRequest]:
    return []


@pytest.fixture(scope="module")
def host(timer_calls: list[func.TimerRequest]) -> Iterator[LocalHost]:
    with LocalHost(app=build_app(timer_calls), users=[ALICE, BOB], route_prefix="api") as running:
        yield running


def _client() -> aiohttp.ClientSession:
    # The default cookie jar ignores cookies from IP addresses; unsafe=True accepts 127.0.0.1's.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def _principal(headers: dict[str, str]) -> dict[str, Any]:
    return json.loads(base64.b64decode(headers["x-ms-client-principal"]))


async def _sign_in(
    client: aiohttp.ClientSession, host: LocalHost, user_id: str, redirect: str
) -> aiohttp.ClientResponse:
    async with client.post(
        f"{host.base_url}/.auth/login/aad",
        data={"user_id": user_id, "post_login_redirect_uri": redirect},
        allow_redirects=False,
    ) as response:
        await response.read()
        return response


# --- Easy Auth ---------------------------------------------------------------------------------------


def _assert_alice(headers: dict[str, str]) -> None:
    """`headers` (as a function saw them) carry Easy Auth's principal for Alice, and no client-sent token."""
    assert headers["x-ms-client-principal-id"] == ALICE["id"]
    assert headers["x-ms-client-principal-name"] == ALICE["userPrincipalName"]
    assert headers["x-ms-client-principal-idp"] == "aad"
    assert "x-ms-token-aad-id-token" not in headers
    principal = _principal(headers)
    assert principal["auth_typ"] == "aad"
    assert principal["name_typ"] == "preferred_username" and principal["role_typ"] == "roles"
    claims = {claim["typ"]: claim["val"] for claim in principal["claims"]}
    assert claims == {
        CLAIM_OID: ALICE["id"],
        "preferred_username": ALICE["userPrincipalName"],
        "name": ALICE["displayName"],
        CLAIM_TID: ALICE["tenantId"],
    }


async def test_browser_without_session_is_sent_to_sign_in_then_gets_principal_headers(host: LocalHost) -> None:
    async with _client() as client:
        async with client.get(
            f"{host.base_url}/api/echo?x=1&y=2", headers={"Accept": "text/html,*/*"}, allow_redirects=False
        ) as response:
            assert response.status == 302
            location = response.headers["Location"]
        assert location == f"/.auth/login/aad?post_login_redirect_uri={quote('/api/echo?x=1&y=2', safe='')}"

        async with client.get(f"{host.base_url}{location}") as page:
            assert page.status == 200
            assert page.content_type == "text/html"
            document = await page.text()
        assert '<label for="user_id">' in document and 'id="user_id"' in document
        assert f'value="{ALICE["id"]}"' in document and "Alice Admin" in document and "bob@contoso.test" in document
        assert 'value="/api/echo?x=1&amp;y=2"' in document  # the hidden redirect, escaped
        # One script only, the one that keeps a URL fragment through sign-in, and the page's policy allows only it.
        assert document.count("<script") == 1 and f"<script>{KEEP_FRAGMENT_SCRIPT}</script>" in document
        digest = base64.b64encode(hashlib.sha256(KEEP_FRAGMENT_SCRIPT.encode()).digest()).decode()
        assert f"script-src 'sha256-{digest}'" in page.headers["Content-Security-Policy"]

        response = await _sign_in(client, host, ALICE["id"], "/api/echo?x=1&y=2")
        assert response.status == 302
        assert response.headers["Location"] == "/api/echo?x=1&y=2"
        set_cookie = response.headers["Set-Cookie"]
        assert set_cookie.startswith(f"{SESSION_COOKIE}=")
        assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/" in set_cookie

        # A client-sent principal never reaches the function: the platform's replaces it.
        async with client.get(
            f"{host.base_url}/api/echo?x=1&y=2",
            headers={"X-MS-CLIENT-PRINCIPAL-ID": "forged", "X-MS-TOKEN-AAD-ID-TOKEN": "forged"},
        ) as echoed:
            assert echoed.status == 200
            seen = await echoed.json()
        _assert_alice(seen["headers"])
        assert seen["params"] == {"x": "1", "y": "2"}
        assert seen["url"] == f"{host.base_url}/api/echo?x=1&y=2"

        async with client.get(f"{host.base_url}/.auth/me") as me:
            assert me.status == 200
            body = await me.json()
        assert body[0]["user_id"] == ALICE["userPrincipalName"] and body[0]["provider_name"] == "aad"

        async with client.get(f"{host.base_url}/.auth/logout", allow_redirects=False) as logout:
            assert logout.status == 200
        async with client.get(f"{host.base_url}/api/echo") as after:
            assert after.status == 401


async def test_api_request_without_session_gets_401(host: LocalHost) -> None:
    async with _client() as client:
        for method, headers in (("GET", {"Accept": "application/json"}), ("POST", {"Accept": "text/html"})):
            async with client.request(method, f"{host.base_url}/api/echo", headers=headers, allow_redirects=False) as r:
                assert r.status == 401
                assert await r.json() == {"error": "unauthenticated"}
        async with client.get(f"{host.base_url}/api/nowhere", allow_redirects=False) as unknown:
            assert unknown.status == 401  # Easy Auth answers before the app can say 404
        async with client.get(f"{host.base_url}/.auth/me") as me:
            assert me.status == 401


async def test_anonymous_path_passes_without_principal_and_strips_forged_headers(host: LocalHost) -> None:
    forged = {
        "X-MS-CLIENT-PRINCIPAL": base64.b64encode(b'{"claims":[]}').decode(),
        "X-MS-CLIENT-PRINCIPAL-ID": "forged",
        "x-ms-client-principal-name": "forged@evil.test",
        "X-MS-CLIENT-PRINCIPAL-IDP": "aad",
        "X-MS-TOKEN-AAD-ACCESS-TOKEN": "forged",
        "X-Other": "kept",
    }
    async with _client() as client, client.get(f"{host.base_url}/api/health", headers=forged) as response:
        assert response.status == 200
        seen = (await response.json())["headers"]
    assert not [name for name in seen if name.startswith(("x-ms-client-principal", "x-ms-token-"))]
    assert seen["x-other"] == "kept"


async def test_signed_in_user_on_anonymous_path_still_gets_principal(host: LocalHost) -> None:
    cookies = host.session_cookie(BOB["id"])
    async with _client() as client, client.get(f"{host.base_url}/api/health/", cookies=cookies) as response:
        assert response.status == 200
        seen = (await response.json())["headers"]
    assert seen["x-ms-client-principal-name"] == BOB["userPrincipalName"]
    claims = {claim["typ"] for claim in _principal(seen)["claims"]}
    assert CLAIM_TID not in claims  # Bob's record has no tenant and this host was given none


@pytest.mark.parametrize(
    "redirect",
    ["https://evil.example/", "//evil.example/x", "/\\evil.example", "evil.example", "/ok\r\nX-Injected: 1", ""],
)
async def test_open_redirect_is_refused(host: LocalHost, redirect: str) -> None:
    async with _client() as client:
        response = await _sign_in(client, host, ALICE["id"], redirect)
        if redirect == "":
            assert response.status == 302 and response.headers["Location"] == "/"  # no redirect given: the root
            return
        assert response.status == 400
        assert "Set-Cookie" not in response.headers
        query = quote(redirect, safe="")
        async with client.get(f"{host.base_url}/.auth/login/aad?post_login_redirect_uri={query}") as page:
            assert page.status == 400


async def test_sign_in_refuses_unknown_users_and_cross_site_posts(host: LocalHost) -> None:
    async with _client() as client:
        response = await _sign_in(client, host, "not-a-user", "/api/echo")
        assert response.status == 400 and "Set-Cookie" not in response.headers
        async with client.post(
            f"{host.base_url}/.auth/login/aad",
            data={"user_id": ALICE["id"], "post_login_redirect_uri": "/"},
            headers={"Origin": "https://evil.example"},
            allow_redirects=False,
        ) as cross_site:
            assert cross_site.status == 403 and "Set-Cookie" not in cross_site.headers


def test_safe_redirect() -> None:
    assert safe_redirect("/api/x?y=1#z") == "/api/x?y=1#z"
    for bad in (None, "", "//x", "/\\x", "http://x/", "javascript:alert(1)", "x", "/a\tb"):
        assert safe_redirect(bad) is None


def test_session_cookie_for_unknown_user_fails(host: LocalHost) -> None:
    with pytest.raises(KeyError):
        host.session_cookie("nobody")


async def test_users_are_fetched_from_users_url() -> None:
    async def users(request: web.Request) -> web.Response:
        return web.json_response([ALICE])

    application = web.Application()
    application.router.add_get("/_emulator/users", users)
    async with TestServer(application, host="127.0.0.1") as server:
        with LocalHost(app=build_app([]), users_url=str(server.make_url("/_emulator/users"))) as host:
            async with _client() as client:
                async with client.get(f"{host.base_url}/.auth/login/aad") as page:
                    assert page.status == 200
                    assert "alice@contoso.test" in await page.text()
                response = await _sign_in(client, host, ALICE["id"], "/api/echo")
                assert response.status == 302
                async with client.get(f"{host.base_url}/api/echo") as echoed:
                    assert (await echoed.json())["headers"]["x-ms-client-principal-id"] == ALICE["id"]


async def test_unreachable_users_url_gives_502() -> None:
    with (
        LocalHost(app=build_app([]), users_url="http://127.0.0.1:9/users") as host,
        pytest.raises(Exception, match="could not load users"),
    ):
        host.session_cookie(ALICE["id"])
    with LocalHost(app=build_app([]), users_url="http://127.0.0.1:9/users") as host:
        async with _client() as client, client.get(f"{host.base_url}/.auth/login/aad") as page:
            assert page.status == 502


def test_easy_auth_setting_is_set_while_running_and_restored(timer_calls: list[func.TimerRequest]) -> None:
    before = os.environ.get("WEBSITE_AUTH_ENABLED")
    with LocalHost(app=build_app(timer_calls)):
        assert os.environ["WEBSITE_AUTH_ENABLED"] == "True"
    assert os.environ.get("WEBSITE_AUTH_ENABLED") == before


# --- routing and invocation ---------------------------------------------------------------------------


async def test_routes_match_literals_names_and_guids(host: LocalHost) -> None:
    cookies = host.session_cookie(ALICE["id"])
    cases = {
        "/api/items/new": (200, {"route": "new"}),
        "/api/ITEMS/NEW": (200, {"route": "new"}),  # literals match case-insensitively, as on the host
        "/API/items/new/": (200, {"route": "new"}),  # so does the route prefix; one trailing slash is fine
        f"/api/items/{GUID}": (200, {"route": "by_id", "id": GUID}),
        f"/api/items/{GUID.upper()}": (200, {"route": "by_id", "id": GUID.upper()}),  # passed through as given
        f"/api/items/%7B{GUID}%7D": (200, {"route": "by_id", "id": "{" + GUID + "}"}),
        f"/api/items/{GUID.replace('-', '')}": (200, {"route": "by_id", "id": GUID.replace("-", "")}),
        "/api/items/not-a-guid": (404, None),  # the host's guid constraint: no match, so 404
        f"/api/items/{GUID}0": (404, None),
        f"/api/items/{GUID}/more": (404, None),
        "/api/items/": (404, None),
        f"/api/people/Ann%20Lee/items/{GUID}": (200, {"name": "Ann Lee", "id": GUID}),  # decoded, case kept
        f"/api/people/ann/items/{GUID[:-1]}": (404, None),
        f"/api/people/ann/items/{GUID}/x": (404, None),
        "/api/nothing-here": (404, None),
        "/elsewhere": (404, None),
        "/items/new": (404, None),  # outside the route prefix
    }
    async with _client() as client:
        for path, (status, body) in cases.items():
            async with client.get(f"{host.base_url}{path}", cookies=cookies) as response:
                assert response.status == status, path
                if body is not None:
                    assert await response.json() == body, path
        async with client.post(f"{host.base_url}/api/items/new", cookies=cookies) as wrong_method:
            assert wrong_method.status == 404


def test_route_matcher() -> None:
    ordered = sorted(
        (RouteTemplate.parse(t) for t in ("items/{id}", "items/{id:guid}", "Items/New")),
        key=lambda route: route.precedence,
    )
    # A literal wins over {name:guid}, which wins over {name}: exceptions/new is never taken for an id.
    assert [route.template for route in ordered] == ["Items/New", "items/{id:guid}", "items/{id}"]
    route = RouteTemplate.parse("/exceptions/{id:guid}/revoke/")
    assert route.match(["exceptions", GUID, "revoke"]) == {"id": GUID}
    assert route.match(["EXCEPTIONS", f"({GUID})", "Revoke"]) == {"id": f"({GUID})"}
    assert route.match(["exceptions", GUID]) is None
    assert route.match(["exceptions", "new", "revoke"]) is None
    assert route.match(["exceptions", GUID, "revoke", "x"]) is None
    assert RouteTemplate.parse("a/{x}/{y}").match(["a", "1", "2"]) == {"x": "1", "y": "2"}
    assert RouteTemplate.parse("a/{x}").match(["a", ""]) is None  # {name} takes a non-empty segment
    assert RouteTemplate.parse("/").match([]) == {}
    with pytest.raises(RouteError, match=re.escape("route 'x/{id:int}' uses '{id:int}': " + SUPPORTED)):
        RouteTemplate.parse("x/{id:int}")


def _app_with_route(route: str | None, name: str = "f") -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    def handler(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("ok")

    handler.__name__ = name
    app.route(route=route, methods=["GET"])(handler)
    return app


def _refusal(app: func.FunctionApp) -> str:
    """The message the host refuses `app` with when it indexes it; it serves nothing then."""
    host = LocalHost(app=app, route_prefix="api")
    with pytest.raises(HostError) as refused:
        host.start()
    assert host.functions == {}
    with pytest.raises(HostError, match="not running"):
        host.session_cookie(ALICE["id"])
    return str(refused.value)


@pytest.mark.parametrize(
    "form",
    [
        "{id:int}",
        "{id:alpha}",
        "{id:nope}",
        "{n:range(1,5)}",
        "{id:guid:length(36)}",
        "{code:regex(^[a-z]{{3}}$)}",
        "{id?}",
        "{n:int?}",
        "{id:guid?}",
        "{lang=en}",
        "{*path}",
        "{**path}",
        "{name}.{ext}",
        "v{version}",
        "{{literal}}",
        "{}",
        "{id:guid",
    ],
)
def test_unsupported_route_form_is_refused_at_indexing(form: str) -> None:
    route = f"x/{form}"
    message = _refusal(_app_with_route(route))
    assert message == f"route {route!r} of function 'f' uses {form!r}: {SUPPORTED}"


def test_empty_segment_and_repeated_names_are_refused_at_indexing() -> None:
    assert _refusal(_app_with_route("a//b")) == f"route 'a//b' of function 'f' has an empty segment: {SUPPORTED}"
    assert (
        _refusal(_app_with_route("a/{id}/{ID:guid}"))
        == "route 'a/{id}/{ID:guid}' of function 'f' uses a parameter name twice"
    )


@pytest.mark.parametrize(
    ("route", "name", "prefix"),
    [
        ("admin", "f", "admin"),
        ("admin/tools", "f", "admin"),
        ("Admin/{id:guid}", "f", "admin"),
        ("/ADMIN/", "f", "admin"),
        ("administration/x", "f", "admin"),  # the host compares a string prefix, not a segment
        ("runtime/webhooks", "f", "runtime"),
        (None, "admin_tasks", "admin"),  # no route: the function's name is its route, checked the same way
    ],
)
def test_reserved_route_is_refused_at_indexing(route: str | None, name: str, prefix: str) -> None:
    message = _refusal(_app_with_route(route, name))
    assert message == (
        f"route {route or name!r} of function {name!r} starts with {prefix!r}, which the Functions host "
        "reserves for its own endpoints (it refuses the function, whatever the route prefix)"
    )


async def test_admin_later_in_a_route_is_served_and_the_hosts_admin_api_stays() -> None:
    with LocalHost(app=_app_with_route("tools/admin"), route_prefix="api", anonymous=["/api/*"]) as host:
        async with _client() as client:
            async with client.get(f"{host.base_url}/api/tools/admin") as served:
                assert served.status == 200 and await served.text() == "ok"
            async with client.get(f"{host.base_url}/api/admin/tools") as nothing:
                assert nothing.status == 404
            async with client.get(f"{host.base_url}/admin/host/status") as status:
                assert status.status == 200 and await status.json() == {"state": "Running"}
            async with client.get(f"{host.base_url}/admin/functions") as listing:
                assert [f["url"] for f in await listing.json()] == [f"{host.base_url}/api/tools/admin"]


async def test_sync_functions_run_in_a_thread_and_async_ones_on_the_loop(host: LocalHost) -> None:
    cookies = host.session_cookie(ALICE["id"])
    async with _client() as client:
        async with client.get(f"{host.base_url}/api/health") as sync_response:
            assert (await sync_response.json())["thread"] != "localhost"
        async with client.get(f"{host.base_url}/api/echo", cookies=cookies) as async_response:
            assert (await async_response.json())["thread"] == "localhost"


async def test_exception_gives_generic_500_and_logs_traceback(
    host: LocalHost, caplog: pytest.LogCaptureFixture
) -> None:
    cookies = host.session_cookie(ALICE["id"])
    async with _client() as client, client.get(f"{host.base_url}/api/boom", cookies=cookies) as response:
        assert response.status == 500
        assert "secret detail" not in await response.text()
    assert "secret detail of the failure" in caplog.text and "Traceback" in caplog.text


async def test_response_conversion(host: LocalHost) -> None:
    cookies = host.session_cookie(ALICE["id"])
    async with _client() as client:
        async with client.get(f"{host.base_url}/api/cookies", cookies=cookies) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            assert response.headers["X-Custom"] == "yes"
            assert sorted(response.headers.getall("Set-Cookie")) == ["a=1; HttpOnly; Path=/", "b=2; Path=/"]
            assert await response.text() == "<p>hi</p>"
        async with client.get(f"{host.base_url}/api/text", cookies=cookies) as text:
            assert text.status == 200 and await text.text() == "plain"


async def test_large_bodies_reach_the_app(host: LocalHost) -> None:
    cookies = host.session_cookie(ALICE["id"])
    body = b"x" * (3 * 1024 * 1024)  # beyond aiohttp's 1 MB default: the app, not the host, sets the limit
    async with _client() as client, client.post(f"{host.base_url}/api/echo", data=body, cookies=cookies) as response:
        assert response.status == 200
        assert (await response.json())["body_length"] == len(body)


async def test_foreign_host_header_is_refused(host: LocalHost) -> None:
    async with _client() as client, client.get(f"{host.base_url}/api/health", headers={"Host": "evil.example"}) as r:
        assert r.status == 400


# --- timers -------------------------------------------------------------------------------------------


async def test_timer_via_admin_api(host: LocalHost, timer_calls: list[func.TimerRequest]) -> None:
    before = len(timer_calls)
    TICKED.clear()
    async with _client() as client:
        async with client.post(f"{host.base_url}/admin/functions/tick", json={"input": ""}) as response:
            assert response.status == 202
        assert await asyncio.to_thread(TICKED.wait, 5)  # 202 comes first; the run follows in the background
        assert len(timer_calls) == before + 1
        assert isinstance(timer_calls[-1], func.TimerRequest) and timer_calls[-1].past_due is False
        async with client.post(f"{host.base_url}/admin/functions/TICK") as no_body:
            assert no_body.status == 202
        async with client.post(f"{host.base_url}/admin/functions/nope", json={"input": ""}) as unknown:
            assert unknown.status == 404
        async with client.post(f"{host.base_url}/admin/functions/echo") as not_a_timer:
            assert not_a_timer.status == 400
        async with client.post(
            f"{host.base_url}/admin/functions/tick", headers={"Origin": "https://evil.example"}
        ) as cross_site:
            assert cross_site.status == 403
        async with client.get(f"{host.base_url}/admin/functions") as listing:
            names = {function["name"] for function in await listing.json()}
        assert {"tick", "broken_timer", "echo", "item_new"} <= names


async def _admin_tick(host: LocalHost, headers: dict[str, str], name: str = "tick") -> int:
    """POST /admin/functions/{name} with `headers`; the answer's status."""
    async with _client() as client, client.post(f"{host.base_url}/admin/functions/{name}", headers=headers) as response:
        await response.read()
        return response.status


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # sent after a cross-site redirect, by sandboxed frames and file: pages
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # a page on another port of 127.0.0.1 is same-site, not same-origin
        {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "cross-site"},  # Fetch Metadata is checked too
        {"Origin": "http://127.0.0.1:{port}.evil.example"},
        {"Origin": "https://127.0.0.1:{port}"},  # another scheme is another origin
        {"Origin": "http://127.0.0.1:1", "Host": "127.0.0.1:1"},  # the Host header does not vouch for an origin
    ],
    ids=[
        "foreign",
        "null",
        "fetch-cross-site",
        "fetch-same-site",
        "own-origin-but-cross-site",
        "suffix",
        "https",
        "forged-host",
    ],
)
async def test_admin_api_refuses_cross_site_requests_and_runs_no_timer(
    host: LocalHost, timer_calls: list[func.TimerRequest], headers: dict[str, str]
) -> None:
    headers = {name: value.replace("{port}", str(host.port)) for name, value in headers.items()}
    before = len(timer_calls)
    TICKED.clear()
    assert await _admin_tick(host, headers) == 403
    assert not await asyncio.to_thread(TICKED.wait, 0.3)  # an accepted run starts before the answer goes out
    assert len(timer_calls) == before
    assert await _admin_tick(host, headers, "nope") == 403  # refused before the name is looked up
    # The same call without the browser's headers still runs the timer (curl, Core Tools).
    await _ticks_once(host, timer_calls, {})


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, Core Tools' clients: no Origin, no Fetch Metadata
        {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "HTTP://127.0.0.1:{port}"},  # compared case-insensitively
        {"Origin": "http://localhost:{port}"},  # bound to loopback, the host answers to every loopback name
        {"Sec-Fetch-Site": "none"},  # typed into the address bar or sent by an extension, not by a site
    ],
    ids=["no-origin", "own-origin", "own-origin-uppercase", "localhost", "fetch-none"],
)
async def test_admin_api_runs_the_timer_for_local_callers_and_its_own_origin(
    host: LocalHost, timer_calls: list[func.TimerRequest], headers: dict[str, str]
) -> None:
    await _ticks_once(
        host, timer_calls, {name: value.replace("{port}", str(host.port)) for name, value in headers.items()}
    )


async def _ticks_once(host: LocalHost, timer_calls: list[func.TimerRequest], headers: dict[str, str]) -> None:
    """The admin API accepts the call and runs the timer exactly once."""
    before = len(timer_calls)
    TICKED.clear()
    assert await _admin_tick(host, headers) == 202
    assert await asyncio.to_thread(TICKED.wait, 5)
    assert len(timer_calls) == before + 1


async def test_fire(host: LocalHost, timer_calls: list[func.TimerRequest]) -> None:
    before = len(timer_calls)
    host.fire("tick")
    assert len(timer_calls) == before + 1
    await host.fire_async("tick")
    assert len(timer_calls) == before + 2
    with pytest.raises(ValueError, match="timer failed"):
        host.fire("broken_timer")
    with pytest.raises(KeyError):
        host.fire("echo")


def test_the_apps_principal_parser_reads_the_injected_headers() -> None:
    from shared.web.principal import principal_from_headers

    headers = EasyAuthUser.from_directory(ALICE).headers()
    parsed = principal_from_headers(headers, env={"WEBSITE_AUTH_ENABLED": "True"})
    assert parsed is not None
    assert (parsed.object_id, parsed.upn, parsed.name) == (ALICE["id"], ALICE["userPrincipalName"], "Alice Admin")


# The headers as the Easy Auth side produced them before it was split out: pinned byte for byte.
ALICE_PRINCIPAL = (
    "eyJhdXRoX3R5cCI6ImFhZCIsImNsYWltcyI6W3sidHlwIjoiaHR0cDovL3NjaGVtYXMubWljcm9zb2Z0LmNvbS9pZGVudGl0eS9jbGFp"
    "bXMvb2JqZWN0aWRlbnRpZmllciIsInZhbCI6IjZmMWMxYTUyLTFmNGUtNGM3ZS05YTUzLTBkN2YxYTFiMmMzZCJ9LHsidHlwIjoicHJl"
    "ZmVycmVkX3VzZXJuYW1lIiwidmFsIjoiYWxpY2VAY29udG9zby50ZXN0In0seyJ0eXAiOiJuYW1lIiwidmFsIjoiQWxpY2UgQWRtaW4i"
    "fSx7InR5cCI6Imh0dHA6Ly9zY2hlbWFzLm1pY3Jvc29mdC5jb20vaWRlbnRpdHkvY2xhaW1zL3RlbmFudGlkIiwidmFsIjoiOGE5YjBj"
    "MWQtMmUzZi00YTViLThjNmQtN2U4ZjlhMGIxYzJkIn1dLCJuYW1lX3R5cCI6InByZWZlcnJlZF91c2VybmFtZSIsInJvbGVfdHlwIjoi"
    "cm9sZXMifQ=="
)


async def test_injected_principal_headers_are_byte_identical(host: LocalHost) -> None:
    assert EasyAuthUser.from_directory(ALICE).headers() == {
        "X-MS-CLIENT-PRINCIPAL": ALICE_PRINCIPAL,
        "X-MS-CLIENT-PRINCIPAL-ID": ALICE["id"],
        "X-MS-CLIENT-PRINCIPAL-NAME": ALICE["userPrincipalName"],
        "X-MS-CLIENT-PRINCIPAL-IDP": "aad",
    }
    cookies = host.session_cookie(ALICE["id"])
    async with _client() as client, client.get(f"{host.base_url}/api/echo", cookies=cookies) as response:
        seen = (await response.json())["headers"]
    assert seen["x-ms-client-principal"] == ALICE_PRINCIPAL  # what the function receives


def test_the_real_app_never_takes_exceptions_new_for_an_id(site) -> None:  # type: ignore[no-untyped-def]
    """The app's own routes on the local host: `exceptions/new` is the form, a non-GUID id is 404."""
    import urllib.error
    import urllib.request

    cookie = site.host.session_cookie(site.people.requester.external_directory_object_id)
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookie.items())}
    with urllib.request.urlopen(
        urllib.request.Request(f"{site.host.base_url}/api/exceptions/new", headers=headers)
    ) as r:
        assert r.status == 200
        assert "Request an SMTP AUTH exception" in r.read().decode()
    try:
        urllib.request.urlopen(
            urllib.request.Request(f"{site.host.base_url}/api/exceptions/not-a-guid", headers=headers)
        )
        raise AssertionError("a non-GUID id was routed")
    except urllib.error.HTTPError as err:
        assert err.code == 404


def test_access_log_never_shows_the_query(caplog: pytest.LogCaptureFixture) -> None:
    """A query string may carry a secret (an old-style link, a mistaken client): the access log leaves it out."""
    import urllib.request

    app = func.FunctionApp()

    @app.route(route="approvals/{id:guid}", auth_level=func.AuthLevel.ANONYMOUS)
    def page(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("ok")

    path = "/api/approvals/6f1c2f0e-1c1b-4b4e-9a53-2b1e8c1d2f00"
    with (
        caplog.at_level(logging.INFO, logger="devservices.localhost"),
        LocalHost(app=app, access_log=True, anonymous=[path]) as host,
    ):
        urllib.request.urlopen(f"{host.base_url}{path}?token=SECRET-TOKEN").read()
    assert f"GET {path} 200" in caplog.text
    assert "SECRET-TOKEN" not in caplog.text


def test_command_line_serves_the_real_app_and_stops_on_sigterm(tmp_path: Any) -> None:
    """`python -m devservices.localhost` with its flags: it lists the app's functions, serves, and stops cleanly."""
    import urllib.request

    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": {"LOCALHOST_CLI_TEST": "1"}}), encoding="utf-8")
    command = [sys.executable, "-m", "devservices.localhost", "--port", "0", "--host", "127.0.0.1"]
    command += ["--settings", str(settings), "--anonymous", "/api/health", "--tenant-id", ALICE["tenantId"]]
    command += ["--users-url", "http://127.0.0.1:9/users"]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            lines = []
            while not lines or lines[-1] != "Press Ctrl+C to stop.":
                line = process.stdout.readline()
                assert line, f"the host ended early: {lines}"
                lines.append(line.rstrip("\n"))
            printed = "\n".join(lines)
            assert "Loaded 1 settings (values not shown)." in printed and "LOCALHOST_CLI_TEST" not in printed
            base = re.search(r"Sign in: (http://127\.0\.0\.1:\d+)/\.auth/login/aad", printed)
            assert base is not None
            assert f"exception_status: [GET] {base[1]}/api/exceptions/{{id:guid}}" in printed
            with urllib.request.urlopen(f"{base[1]}/admin/host/status", timeout=10) as status:
                assert status.status == 200 and json.loads(status.read()) == {"state": "Running"}
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
