"""A local Functions host for this app: serves its HTTP functions, fires its timers, plays Easy Auth.

Azure Functions Core Tools cannot run here, so this plays the platform's part on loopback:

* the same function objects as on Azure: `function_app.app.get_functions()`, read once; each HTTP
  trigger is served at `/{routePrefix}/{route}` with the host's route template rules, and the
  request and response go through `azure.functions`' own HTTP converters (the worker's code path);
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
import inspect
import ipaddress
import json
import logging
import os
import re
import signal
import sys
import threading
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final, Self

import azure.functions as func
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from azure.functions import meta
from azure.functions.http import HttpRequestConverter, HttpResponseConverter
from azure.functions.timer import TimerRequestConverter
from multidict import CIMultiDict
from yarl import URL

from devservices.easyauth import EasyAuth, path_segments

REPO: Final = Path(__file__).resolve().parent.parent
LOCAL_SETTINGS: Final = REPO / "local.settings.json"
HOST_JSON: Final = REPO / "host.json"
# The Functions host's default request size limit (100 MB): the app enforces its own, smaller one.
MAX_REQUEST_BYTES: Final = 100 * 1024 * 1024
EASY_AUTH_SETTING: Final = "WEBSITE_AUTH_ENABLED"
# Headers the server computes itself; a function's values for them would be wrong or harmful.
_HOP_BY_HOP: Final = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_LOOPBACK_NAMES: Final = frozenset({"localhost"})
# An Origin header as browsers serialise it: scheme, host and an optional port, nothing else.
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[^\s:/?#\[\]@]+)(?::(?P<port>[1-9]\d{0,4}))?",
    re.IGNORECASE,
)
# Fetch Metadata values of a request the browser did not send on behalf of another site.
_OWN_FETCH_SITES: Final = frozenset({"same-origin", "none"})

log = logging.getLogger("devservices.localhost")


class HostError(RuntimeError):
    """The app cannot be hosted: a bad route template, a missing settings file, a port in use."""


# --- route templates ---------------------------------------------------------------------------------

_INT32: Final = (-(2**31), 2**31 - 1)
_INT64: Final = (-(2**63), 2**63 - 1)
_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")
_DOUBLE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_HEX = "[0-9a-fA-F]"
_GUID_D = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
_GUID = re.compile(rf"{_GUID_D}|\{{{_GUID_D}\}}|\({_GUID_D}\)|{_HEX}{{32}}")
_ALPHA = re.compile(r"[A-Za-z]+")

Check = Callable[[str], bool]


def _integer(low: int, high: int) -> Check:
    return lambda value: bool(_INTEGER.fullmatch(value)) and low <= int(value) <= high


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _numbers(args: str | None, count: int, constraint: str) -> list[int]:
    try:
        numbers = [int(part) for part in (args or "").split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != count:
        raise HostError(f"route constraint {constraint} needs {count} integer argument(s)")
    return numbers


def _length(args: str | None) -> Check:
    parts = (args or "").split(",")
    low, high = _numbers(args, len(parts), "length") if len(parts) == 2 else _numbers(args, 1, "length") * 2
    return lambda value: low <= len(value) <= high


def _constraint(name: str, args: str | None) -> Check:
    """One of ASP.NET Core's inline route constraints, which the Functions host uses."""
    lowered = name.lower()
    simple: dict[str, Check] = {
        "int": _integer(*_INT32),
        "long": _integer(*_INT64),
        "bool": lambda value: value.lower() in ("true", "false"),
        "guid": lambda value: bool(_GUID.fullmatch(value)),
        "alpha": lambda value: bool(_ALPHA.fullmatch(value)),
        "decimal": lambda value: bool(_DECIMAL.fullmatch(value)),
        "double": lambda value: bool(_DOUBLE.fullmatch(value)),
        "float": lambda value: bool(_DOUBLE.fullmatch(value)),
        "datetime": _is_datetime,
    }
    if lowered in simple:
        return simple[lowered]
    if lowered == "minlength":
        (low,) = _numbers(args, 1, name)
        return lambda value: len(value) >= low
    if lowered == "maxlength":
        (high,) = _numbers(args, 1, name)
        return lambda value: len(value) <= high
    if lowered == "length":
        return _length(args)
    if lowered == "min":
        (low,) = _numbers(args, 1, name)
        return lambda value: bool(_INTEGER.fullmatch(value)) and int(value) >= low
    if lowered == "max":
        (high,) = _numbers(args, 1, name)
        return lambda value: bool(_INTEGER.fullmatch(value)) and int(value) <= high
    if lowered == "range":
        low, high = _numbers(args, 2, name)
        return _integer(low, high)
    if lowered == "regex" and args:
        try:
            pattern = re.compile(args, re.IGNORECASE)
        except re.error as err:
            raise HostError(f"route constraint regex({args}) is not a valid regular expression: {err}") from err
        return lambda value: pattern.search(value) is not None
    raise HostError(f"unknown route constraint {name!r}")


@dataclass(frozen=True, slots=True)
class RouteParam:
    name: str
    checks: tuple[Check, ...] = ()
    optional: bool = False
    default: str | None = None
    catch_all: bool = False

    def accepts(self, value: str) -> bool:
        return all(check(value) for check in self.checks)


@dataclass(frozen=True, slots=True)
class Segment:
    pattern: re.Pattern[str]
    params: tuple[RouteParam, ...]
    rank: int  # ASP.NET Core's inbound precedence digit: literal 1, complex 2, constrained 3, plain 4, catch-all 5

    @property
    def param(self) -> RouteParam | None:
        return self.params[0] if len(self.params) == 1 and self.pattern.pattern == "(?P<p0>.+)" else None


def _parse_param(text: str) -> RouteParam:
    catch_all = text.startswith("*")
    text = text.lstrip("*")
    match = re.match(r"[^:=?]+", text)
    if not match:
        raise HostError(f"route parameter {{{text}}} has no name")
    name, rest = match.group(), text[match.end() :]
    checks: list[Check] = []
    while rest.startswith(":"):
        constraint = re.match(r":(\w+)", rest)
        if not constraint:
            raise HostError(f"bad constraint in route parameter {{{text}}}")
        rest = rest[constraint.end() :]
        args = None
        if rest.startswith("("):
            # the argument ends at a ")" followed by the end, another constraint, "=" or "?"
            ends = (i for i in range(1, len(rest)) if rest[i] == ")" and rest[i + 1 : i + 2] in ("", ":", "=", "?"))
            close = next(ends, -1)
            if close < 0:
                raise HostError(f"unclosed constraint argument in route parameter {{{text}}}")
            args, rest = rest[1:close], rest[close + 1 :]
        checks.append(_constraint(constraint.group(1), args))
    optional, default = False, None
    if rest == "?":
        optional = True
    elif rest.startswith("="):
        default = rest[1:]
    elif rest:
        raise HostError(f"bad route parameter {{{text}}}")
    return RouteParam(name=name, checks=tuple(checks), optional=optional, default=default, catch_all=catch_all)


def _split_segment(segment: str) -> list[str | RouteParam]:
    """Literal text and parameters of one segment; `{{` and `}}` are literal braces."""
    parts: list[str | RouteParam] = []
    literal: list[str] = []
    i = 0
    while i < len(segment):
        if segment.startswith("{{", i) or segment.startswith("}}", i):
            literal.append(segment[i])
            i += 2
        elif segment[i] == "{":
            j, text = i + 1, []
            while True:
                if j >= len(segment):
                    raise HostError(f"unclosed parameter in route segment {segment!r}")
                if segment.startswith("{{", j) or segment.startswith("}}", j):
                    text.append(segment[j])
                    j += 2
                elif segment[j] == "}":
                    break
                else:
                    text.append(segment[j])
                    j += 1
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_parse_param("".join(text)))
            i = j + 1
        elif segment[i] == "}":
            raise HostError(f"unmatched '}}' in route segment {segment!r}")
        else:
            literal.append(segment[i])
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _compile_segment(segment: str) -> Segment:
    parts = _split_segment(segment)
    params = tuple(part for part in parts if isinstance(part, RouteParam))
    if not params:
        return Segment(re.compile(re.escape(segment.replace("{{", "{").replace("}}", "}")), re.IGNORECASE), (), 1)
    if len(parts) == 1:
        (param,) = params
        rank = 5 if param.catch_all else 3 if param.checks else 4
        return Segment(re.compile("(?P<p0>.+)"), params, rank)
    if any(param.catch_all or param.optional or param.default is not None for param in params):
        raise HostError(f"optional, default and catch-all parameters must fill their segment: {segment!r}")
    pattern, index = [], 0
    for part in parts:
        if isinstance(part, RouteParam):
            pattern.append(f"(?P<p{index}>.+?)")
            index += 1
        else:
            pattern.append(re.escape(part))
    return Segment(re.compile("".join(pattern), re.IGNORECASE), params, 2)


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    """A Functions route template ("items/{id:guid}", "files/{*path}", "page/{n:int?}"), compiled."""

    template: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        text = template.strip().strip("/")
        segments = tuple(_compile_segment(part) for part in text.split("/")) if text else ()
        names = [param.name.lower() for segment in segments for param in segment.params]
        if len(names) != len(set(names)):
            raise HostError(f"route {template!r} repeats a parameter name")
        for i, segment in enumerate(segments):
            param = segment.param
            if param and param.catch_all and i != len(segments) - 1:
                raise HostError(f"a catch-all parameter must be the last segment of route {template!r}")
            if not (param and (param.optional or param.default is not None or param.catch_all)) and any(
                later.param and later.param.optional for later in segments[:i]
            ):
                raise HostError(f"only trailing segments may be optional in route {template!r}")
        return cls(template, segments)

    @property
    def precedence(self) -> tuple[tuple[int, ...], str]:
        """Sort key: literal segments win over constrained parameters, which win over plain ones."""
        return tuple(segment.rank for segment in self.segments), self.template.lower()

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        """Route values for decoded path segments (after the route prefix), or None."""
        values: dict[str, str] = {}
        for i, segment in enumerate(self.segments):
            param = segment.param
            if param and param.catch_all:
                rest = "/".join(segments[i:])
                if rest:
                    if not param.accepts(rest):
                        return None
                    values[param.name] = rest
                elif param.default is not None:
                    values[param.name] = param.default
                return values
            if i >= len(segments):
                if param and (param.optional or param.default is not None):
                    if param.default is not None:
                        values[param.name] = param.default
                    continue
                return None
            found = segment.pattern.fullmatch(segments[i])
            if not found:
                return None
            for index, each in enumerate(segment.params):
                value = found.group(f"p{index}")
                if not each.accepts(value):
                    return None
                values[each.name] = value
        return values if len(segments) <= len(self.segments) else None


# --- the function index ------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return str(getattr(value, "value", value))


@dataclass(frozen=True, slots=True)
class IndexedFunction:
    name: str
    trigger_type: str
    user_function: Callable[..., Any]
    arg_name: str
    wants_context: bool
    route: RouteTemplate | None = None
    methods: frozenset[str] | None = None  # None: every method
    auth_level: str | None = None
    schedule: str | None = None
    unplayed_bindings: tuple[str, ...] = field(default=())

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Access lines without the query string, which may carry a secret (an old-style link, a mistaken client).

    Approval links carry their single-use token in the URL fragment (`/api/approvals/{id}#token=...`),
    which browsers never send, so it cannot reach this log in the first place.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.1f ms", request.method, request.path, response.status, time * 1000)


_INDEXED: weakref.WeakKeyDictionary[func.FunctionApp, list[IndexedFunction]] = weakref.WeakKeyDictionary()


def index_functions(app: func.FunctionApp) -> list[IndexedFunction]:
    """Each function's trigger binding, as the host reads it when it indexes the app.

    Cached per app: azure-functions refuses a second `get_functions()` on the same app (it sees
    every name twice), and tests, the demo and this host share one imported function_app.
    """
    if app not in _INDEXED:
        _INDEXED[app] = _index(app)
    return _INDEXED[app]


def _index(app: func.FunctionApp) -> list[IndexedFunction]:
    indexed = []
    for function in app.get_functions():
        name = function.get_function_name()
        trigger = function.get_trigger()
        user_function = function.get_user_function()
        parameters = inspect.signature(user_function).parameters
        if trigger.name not in parameters:  # the worker refuses to index such an app, too
            raise HostError(f"function {name}: its trigger binding {trigger.name!r} is not one of its parameters")
        wants_context = "context" in parameters
        others = tuple(
            f"{binding.type}:{binding.name}"
            for binding in function.get_bindings()
            if binding is not trigger and not (binding.type == "http" and binding.name == "$return")
        )
        if others:
            log.warning("function %s has bindings this host does not play: %s", name, ", ".join(others))
        common = {
            "name": name,
            "trigger_type": trigger.type,
            "user_function": user_function,
            "arg_name": trigger.name,
            "wants_context": wants_context,
            "unplayed_bindings": others,
        }
        if trigger.type == "httpTrigger":
            methods = getattr(trigger, "methods", None)
            try:
                route = RouteTemplate.parse(getattr(trigger, "route", None) or name)
            except HostError as err:
                raise HostError(f"function {name}: {err}") from err
            indexed.append(
                IndexedFunction(
                    **common,
                    route=route,
                    methods=frozenset(_text(method).upper() for method in methods) if methods else None,
                    auth_level=_text(getattr(trigger, "auth_level", None) or "function").lower(),
                )
            )
        elif trigger.type == "timerTrigger":
            indexed.append(IndexedFunction(**common, schedule=getattr(trigger, "schedule", None)))
        else:
            log.warning("function %s has a %s trigger, which this host does not play", name, trigger.type)
            indexed.append(IndexedFunction(**common))
    return indexed


class _Context(func.Context):
    """The `context` argument the Python worker passes to functions that declare it."""

    def __init__(self, function_name: str) -> None:
        self._invocation_id = str(uuid.uuid4())
        self._function_name = function_name

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return threading.local  # type: ignore[return-value]

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return str(REPO)

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


async def _invoke(function: IndexedFunction, argument: Any) -> Any:
    kwargs: dict[str, Any] = {function.arg_name: argument}
    if function.wants_context:
        kwargs["context"] = _Context(function.name)
    if function.is_async:
        return await function.user_function(**kwargs)
    return await asyncio.to_thread(function.user_function, **kwargs)  # the worker's thread pool


def _to_azure_request(request: web.Request, route_values: Mapping[str, str], body: bytes) -> func.HttpRequest:
    """The request as the worker decodes it from the host's RPC message (same converter)."""

    def joined(pairs: Iterable[tuple[str, str]], separator: str) -> dict[str, meta.Datum]:
        merged: dict[str, str] = {}
        for name, value in pairs:
            merged[name] = f"{merged[name]}{separator}{value}" if name in merged else value
        return {name: meta.Datum(type="string", value=value) for name, value in merged.items()}

    datum = meta.Datum(
        type="http",
        value={
            "method": meta.Datum(type="string", value=request.method),
            "url": meta.Datum(type="string", value=str(request.url)),
            "headers": joined(request.headers.items(), ", "),
            "query": joined(request.query.items(), ","),
            "params": {name: meta.Datum(type="string", value=value) for name, value in route_values.items()},
            "body": meta.Datum(type="bytes", value=body),
        },
    )
    return HttpRequestConverter.decode(datum, trigger_metadata=None)


def _to_aiohttp_response(result: Any) -> web.Response:
    """A function's return value as the host sends it (through the worker's encoder)."""
    if result is None:
        return web.Response(status=204)
    datum = HttpResponseConverter.encode(result, expected_type=None)
    if datum.type == "string":
        return web.Response(text=datum.value, content_type="text/plain", charset="utf-8")
    value = datum.value
    headers: CIMultiDict[str] = CIMultiDict()
    for name, header in value["headers"].items():
        if name.lower() not in _HOP_BY_HOP:
            headers.add(name, str(header.value))
    for cookie in value.get("cookies") or ():
        for morsel in cookie.values():
            headers.add("Set-Cookie", morsel.OutputString())
    status = int(value["status_code"].value)
    body = value["body"].value if status not in (204, 304) and value["body"] is not None else b""
    return web.Response(status=status, body=body or None, headers=headers)


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


class LocalHost:
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

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
        # What the host sends for a manual run, decoded by the worker's own converter.
        datum = meta.Datum(type="json", value=json.dumps({"Schedule": {"AdjustForDST": True}, "IsPastDue": False}))
        return await _invoke(function, TimerRequestConverter.decode(datum, trigger_metadata=None))

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
        azure_request = _to_azure_request(request, values, body)
        try:
            result = await _invoke(function, azure_request)
            return _to_aiohttp_response(result)
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
