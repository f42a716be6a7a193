"""The function index of `devservices.localhost`: what the host reads from the app, and how it calls a function.

The host indexes the same function objects as on Azure, `app.get_functions()`, and reads each
trigger binding. It refuses, as the Functions host and the Python worker do, a function whose trigger
argument is not a parameter and an HTTP route the host reserves; and, unlike them, a route form this
host does not implement (see `devservices.routes`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import azure.functions as func

from devservices.routes import RouteError, RouteTemplate

REPO: Final = Path(__file__).resolve().parent.parent  # the function app's root, as the worker reports it

log = logging.getLogger("devservices.localhost")


class HostError(RuntimeError):
    """The app cannot be hosted: an unsupported or reserved route, a missing settings file, a port in use."""


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


_INDEXED: weakref.WeakKeyDictionary[func.FunctionApp, list[IndexedFunction]] = weakref.WeakKeyDictionary()


def index_functions(app: func.FunctionApp) -> list[IndexedFunction]:
    """Each function's trigger binding, as the host reads it when it indexes the app.

    Cached per app: azure-functions refuses a second `get_functions()` on the same app (it sees
    every name twice), and tests, the demo and this host share one imported function_app.
    """
    if app not in _INDEXED:
        _INDEXED[app] = [_index_one(function) for function in app.get_functions()]
    return _INDEXED[app]


def _index_one(function: Any) -> IndexedFunction:
    """One `azure.functions` function object, read as the host reads its function.json."""
    name = function.get_function_name()
    trigger = function.get_trigger()
    user_function = function.get_user_function()
    parameters = inspect.signature(user_function).parameters
    if trigger.name not in parameters:  # the worker refuses to index such an app, too
        raise HostError(f"function {name}: its trigger binding {trigger.name!r} is not one of its parameters")
    others = tuple(
        f"{binding.type}:{binding.name}"
        for binding in function.get_bindings()
        if binding is not trigger and not (binding.type == "http" and binding.name == "$return")
    )
    if others:
        log.warning("function %s has bindings this host does not play: %s", name, ", ".join(others))
    common: dict[str, Any] = {
        "name": name,
        "trigger_type": trigger.type,
        "user_function": user_function,
        "arg_name": trigger.name,
        "wants_context": "context" in parameters,
        "unplayed_bindings": others,
    }
    if trigger.type == "httpTrigger":
        methods = getattr(trigger, "methods", None)
        try:  # without a route, the host serves a function at its name, and checks that name the same way
            route = RouteTemplate.parse(getattr(trigger, "route", None) or name, function=name)
        except RouteError as err:
            raise HostError(str(err)) from err
        return IndexedFunction(
            **common,
            route=route,
            methods=frozenset(_text(method).upper() for method in methods) if methods else None,
            auth_level=_text(getattr(trigger, "auth_level", None) or "function").lower(),
        )
    if trigger.type == "timerTrigger":
        return IndexedFunction(**common, schedule=getattr(trigger, "schedule", None))
    log.warning("function %s has a %s trigger, which this host does not play", name, trigger.type)
    return IndexedFunction(**common)


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


async def invoke(function: IndexedFunction, argument: Any) -> Any:
    """Call the function with its trigger argument (and `context`), as the worker does."""
    kwargs: dict[str, Any] = {function.arg_name: argument}
    if function.wants_context:
        kwargs["context"] = _Context(function.name)
    if function.is_async:
        return await function.user_function(**kwargs)
    return await asyncio.to_thread(function.user_function, **kwargs)  # the worker's thread pool
