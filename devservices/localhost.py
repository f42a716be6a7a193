"""A local Functions host for this app: serves its HTTP functions, fires its timers, plays Easy Auth.

Azure Functions Core Tools cannot run here, so this plays the platform's part on loopback:

* the same function objects as on Azure: `function_app.app.get_functions()`, read once
  (`devservices.indexing`); each HTTP trigger is served at `/{routePrefix}/{route}`, with the few
  route forms the app uses (`devservices.routes`: literals, `{name}`, `{name:guid}`; anything else
  is refused when the app is indexed, and so are routes the Functions host reserves, `admin...`);
* requests, responses and timer runs go through `azure.functions`' own converters, the worker's
  code path (`devservices.conversion`);
* timers run on demand through Core Tools' admin API, `POST /admin/functions/{name}`, which refuses
  a browser's cross-site request (a foreign `Origin`, `Origin: null`, `Sec-Fetch-Site: cross-site`);
* App Service Authentication (Easy Auth) with Entra ID, see `devservices.easyauth`.

    python -m devservices.localhost [--port 7071] [--host 127.0.0.1] [--users-url URL]
        [--anonymous /api/health ...] [--settings FILE] [--tenant-id GUID]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import ipaddress
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any, Final, Self

import azure.functions as func
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from yarl import URL

from devservices.conversion import manual_timer_request, to_aiohttp_response, to_azure_request
from devservices.easyauth import EasyAuth, path_segments
from devservices.indexing import REPO, HostError, IndexedFunction, index_functions, invoke
from devservices.lifecycle import Service
from devservices.routes import RouteError, RouteTemplate

# Imported from here by tests, the demo and scripts; the rest of the host lives in the modules above.
__all__ = [
    "REPO",
    "HostError",
    "IndexedFunction",
    "LocalHost",
    "RouteError",
    "RouteTemplate",
    "index_functions",
    "main",
    "read_settings",
    "route_prefix_from_host_json",
]

LOCAL_SETTINGS: Final = REPO / "local.settings.json"
HOST_JSON: Final = REPO / "host.json"
# The Functions host's default request size limit (100 MB): the app enforces its own, smaller one.
MAX_REQUEST_BYTES: Final = 100 * 1024 * 1024
EASY_AUTH_SETTING: Final = "WEBSITE_AUTH_ENABLED"
_LOOPBACK_NAMES: Final = frozenset({"localhost"})
# An Origin header as browsers serialise it: scheme, host and an optional port, nothing else.
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[^\s:/?#\[\]@]+)(?::(?P<port>[1-9]\d{0,4}))?",
    re.IGNORECASE,
)
# Fetch Metadata values of a request the browser did not send on behalf of another site.
_OWN_FETCH_SITES: Final = frozenset({"same-origin", "none"})

log = logging.getLogger("devservices.localhost")


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Access lines without the query string, which may carry a secret (an old-style link, a mistaken client).

    Approval links carry their single-use token in the URL fragment (`/api/approvals/{id}#token=...`),
    which browsers never send, so it cannot reach this log in the first place.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.1f ms", request.method, request.path, response.status, time * 1000)


# --- settings ---------------------------------------------------------------------------------------


def read_settings(path: Path) -> dict[str, str]:
    """The `Values` of a local.settings.json file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HostError(f"cannot read settings file {path}: {err}") from err
    values = document.get("Values") if isinstance(document, dict) else None
    if not isinstance(values, dict):
        raise HostError(f"settings file {path} has no Values object")
    return {str(name): str(value) for name, value in values.items() if value is not None}


def route_prefix_from_host_json(path: Path = HOST_JSON) -> str:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "api"
    prefix = document.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    return str(prefix).strip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- the host ---------------------------------------------------------------------------------------


class LocalHost(Service):
    """The app on a local HTTP server in a background thread with its own event loop.

    A context manager: `with LocalHost(users=[...]) as host: ... host.base_url ...`.
    `app` defaults to `function_app.app`; tests pass their own `func.FunctionApp()`.
    """

    def __init__(
        self,
        app: func.FunctionApp | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        users: Sequence[Mapping[str, Any]] | None = None,
        users_url: str | None = None,
        anonymous: Iterable[str] = ("/api/health",),
        settings_file: str | Path | None = None,
        load_local_settings: bool | None = None,
        tenant_id: str | None = None,
        route_prefix: str | None = None,
        access_log: bool = False,
        on_stop: Sequence[Callable[[], Awaitable[Any]]] = (),
    ) -> None:
        self._app = app
        self._on_stop = tuple(on_stop)  # run on the host's loop before it closes, e.g. to close clients
        self.host = host
        self.port = port
        self.easy_auth = EasyAuth(users=users, users_url=users_url, anonymous=tuple(anonymous), tenant_id=tenant_id)
        self._settings_file = Path(settings_file) if settings_file else None
        # By default only the real app reads local.settings.json, as `func start` does.
        self._load_local_settings = app is None if load_local_settings is None else load_local_settings
        self.route_prefix = route_prefix_from_host_json() if route_prefix is None else route_prefix.strip("/")
        self._access_log = access_log
        self.functions: dict[str, IndexedFunction] = {}
        self._http: list[IndexedFunction] = []
        self._saved_env: dict[str, str | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.loaded_settings: list[str] = []

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30) -> Self:
        if self._thread is not None:
            raise HostError("the host is already running")
        self._apply_settings()
        try:
            if not self.functions:
                self._index()
            started: Future[None] = Future()
            self._thread = threading.Thread(target=self._run, args=(started,), name="localhost", daemon=True)
            self._thread.start()
            started.result(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        self._thread = None
        self._loop = None
        self._restore_env()

    def _set_env(self, name: str, value: str) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def _apply_settings(self) -> None:
        path = self._settings_file
        if path is None and self._load_local_settings and LOCAL_SETTINGS.exists():
            path = LOCAL_SETTINGS
        if path is not None:
            for name, value in read_settings(path).items():
                if name not in os.environ:  # like `func start`: the environment wins
                    self._set_env(name, value)
                    self.loaded_settings.append(name)
        # App Service sets this when Authentication is on; the app trusts principal headers only then.
        self._set_env(EASY_AUTH_SETTING, "True")

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        self.loaded_settings.clear()

    def _index(self) -> None:
        app = self._app
        if app is None:
            if str(REPO) not in sys.path:
                sys.path.insert(0, str(REPO))
            app = importlib.import_module("function_app").app
        functions = index_functions(app)  # get_functions(), once
        self.functions = {function.name.lower(): function for function in functions}
        http = [function for function in functions if function.route is not None]
        self._http = sorted(http, key=lambda function: function.route.precedence if function.route else ((), ""))

    def _run(self, started: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._startup())
        except BaseException as err:
            started.set_exception(err)
            loop.close()
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _startup(self) -> None:
        application = web.Application(
            client_max_size=MAX_REQUEST_BYTES, middlewares=[self._guard_host, self.easy_auth.middleware]
        )
        application.add_routes(self.easy_auth.routes())
        application.add_routes(
            [
                web.get("/admin/host/status", self._host_status),
                web.get("/admin/functions", self._list_functions),
                web.post("/admin/functions/{name}", self._admin_invoke),
                web.route("*", "/{tail:.*}", self._dispatch),
            ]
        )
        runner = web.AppRunner(
            application, access_log=log if self._access_log else None, access_log_class=PathOnlyAccessLogger
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise HostError(f"cannot listen on {self.host}:{self.port}: {err}") from err
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for hook in self._on_stop:
            with contextlib.suppress(Exception):
                await hook()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _call_soon(self, coroutine: Any) -> Future[Any]:
        if self._loop is None or self._thread is None:
            coroutine.close()
            raise HostError("the host is not running")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise HostError("call this from another thread than the host's")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    # --- helpers for tests and scripts -----------------------------------------------------------

    def session_cookie(self, user_id: str, timeout: float = 30) -> dict[str, str]:
        """Cookies of a new session for `user_id` (a user's object id), as after signing in."""
        token = self._call_soon(self.easy_auth.create_session(user_id)).result(timeout)
        return {"AppServiceAuthSession": token}

    def fire(self, name: str, timeout: float | None = None) -> Any:
        """Run a timer function now and wait for it; its exception is raised here."""
        return self._call_soon(self._run_timer(self._timer(name))).result(timeout)

    async def fire_async(self, name: str) -> Any:
        """`fire` for async callers: awaits the timer function, which runs on the host's loop."""
        return await asyncio.wrap_future(self._call_soon(self._run_timer(self._timer(name))))

    def _timer(self, name: str) -> IndexedFunction:
        function = self.functions.get(name.lower())
        if function is None or function.trigger_type != "timerTrigger":
            raise KeyError(f"no timer function named {name!r}")
        return function

    @staticmethod
    async def _run_timer(function: IndexedFunction) -> Any:
        return await invoke(function, manual_timer_request())

    # --- requests --------------------------------------------------------------------------------

    @web.middleware
    async def _guard_host(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # Bound to loopback: refuse other Host names (DNS rebinding) and dot segments.
        if _is_loopback(self.host):
            try:
                name = URL(f"http://{request.host}").host or ""
            except ValueError:
                name = ""
            if not _is_loopback(name):
                return web.Response(status=400, text="Bad Request: unexpected Host header")
        if any(segment in (".", "..") for segment in path_segments(request.rel_url.raw_path)):
            return web.Response(status=400, text="Bad Request: dot segments in the path")
        return await handler(request)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        segments = path_segments(request.rel_url.raw_path)[1:]
        if segments and segments[-1] == "":
            segments.pop()
        if self.route_prefix:
            prefix = self.route_prefix.split("/")
            if [segment.lower() for segment in segments[: len(prefix)]] != [part.lower() for part in prefix]:
                raise web.HTTPNotFound()
            segments = segments[len(prefix) :]
        for function in self._http:
            assert function.route is not None
            values = function.route.match(segments)
            if values is None:
                continue
            if function.methods is not None and request.method.upper() not in function.methods:
                continue  # the host's route constraint on methods: no match, then 404
            return await self._invoke_http(function, request, values)
        raise web.HTTPNotFound()

    async def _invoke_http(
        self, function: IndexedFunction, request: web.Request, values: Mapping[str, str]
    ) -> web.StreamResponse:
        body = await request.read()  # aiohttp answers 413 beyond client_max_size, like the host
        azure_request = to_azure_request(request, values, body)
        try:
            result = await invoke(function, azure_request)
            return to_aiohttp_response(result)
        except Exception:
            log.exception("function %s failed", function.name)
            return web.Response(status=500, text="Internal Server Error")

    def _is_own_origin(self, origin: str) -> bool:
        """`origin` is the one this host serves: its own base URL, compared case-insensitively.

        Bound to loopback, the host answers to every loopback name on its port (`_guard_host`), so
        `http://localhost:PORT` and `http://127.0.0.1:PORT` are both its own. The request's `Host`
        header plays no part: a client chooses it, and under DNS rebinding it names the attacker's site.
        `null` and anything that is not a bare `scheme://host[:port]` are foreign.
        """
        match = _ORIGIN.fullmatch(origin.strip())
        if match is None or match["scheme"].lower() != "http":
            return False
        port = int(match["port"]) if match["port"] else 80
        name = match["host"].lower().strip("[]")
        if port != self.port:
            return False
        own = self.host.lower().strip("[]")
        return name == own or (_is_loopback(own) and _is_loopback(name))

    def _refuse_cross_site(self, request: web.Request) -> web.StreamResponse | None:
        """A 403 for a request a browser sent on behalf of another site, else None.

        Core Tools' clients, curl and scripts send neither header and pass, as under `func start`.
        """
        origin = request.headers.get("Origin")
        site = request.headers.get("Sec-Fetch-Site")
        if (origin is not None and not self._is_own_origin(origin)) or (
            site is not None and site.strip().lower() not in _OWN_FETCH_SITES
        ):
            return web.json_response({"error": "cross-site requests are refused"}, status=403)
        return None

    async def _admin_invoke(self, request: web.Request) -> web.StreamResponse:
        refused = self._refuse_cross_site(request)  # before anything else: a foreign page learns nothing
        if refused is not None:
            return refused
        function = self.functions.get(request.match_info["name"].lower())
        if function is None:
            return web.json_response({"error": "function not found"}, status=404)
        if function.trigger_type != "timerTrigger":
            return web.json_response({"error": "only timer functions can be invoked here"}, status=400)
        await request.read()  # {"input": ""} or nothing; a timer has no input
        task = asyncio.create_task(self._run_timer_logged(function))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return web.Response(status=202)

    async def _run_timer_logged(self, function: IndexedFunction) -> None:
        try:
            await self._run_timer(function)
        except Exception:
            log.exception("function %s failed", function.name)
        else:
            log.info("function %s succeeded", function.name)

    async def _host_status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"state": "Running"})

    async def _list_functions(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([self._describe(function) for function in self.functions.values()])

    def _describe(self, function: IndexedFunction) -> dict[str, Any]:
        description: dict[str, Any] = {"name": function.name, "trigger": function.trigger_type}
        if function.route is not None:
            description["methods"] = sorted(function.methods) if function.methods else None
            description["url"] = f"{self.base_url}/{self.route_prefix}/{function.route.template.strip('/')}".replace(
                f"{self.base_url}//", f"{self.base_url}/"
            )
            description["authLevel"] = function.auth_level
        if function.schedule is not None:
            description["schedule"] = function.schedule
            description["invoke"] = f"POST {self.base_url}/admin/functions/{function.name}"
        return description


# --- command line -----------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devservices.localhost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7071, help="port (default 7071, 0 for a free one)")
    parser.add_argument("--users-url", help="JSON list of users to sign in as, e.g. {emulator}/_emulator/users")
    parser.add_argument(
        "--anonymous", nargs="*", default=["/api/health"], metavar="PATH", help="paths that need no sign-in"
    )
    parser.add_argument("--settings", type=Path, help="settings file (default: local.settings.json if present)")
    parser.add_argument("--tenant-id", help="tenant id claim for signed-in users (default: AZURE_TENANT_ID)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from shared.bootstrap import close_all  # the app's cached SDK clients: closed on the loop before it ends

    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = LocalHost(
        host=args.host,
        port=args.port,
        users_url=args.users_url,
        anonymous=args.anonymous,
        settings_file=args.settings,
        load_local_settings=True,
        tenant_id=args.tenant_id,
        access_log=True,
        on_stop=[close_all],
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        host.start()
    except HostError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if host.loaded_settings:
            print(f"Loaded {len(host.loaded_settings)} settings (values not shown).")
        print("Functions:")
        for function in host.functions.values():
            described = host._describe(function)
            if "url" in described:
                methods = ",".join(described["methods"] or ["*"])
                print(f"  {function.name}: [{methods}] {described['url']}")
            elif "invoke" in described:
                print(f"  {function.name}: timerTrigger ({described['schedule']}) -> {described['invoke']}")
            else:
                print(f"  {function.name}: {function.trigger_type} (not played)")
        print(f"Sign in: {host.base_url}/.auth/login/aad   Signed-in user: {host.base_url}/.auth/me")
        print("Press Ctrl+C to stop.", flush=True)
        stopping.wait()
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
