"""A path operation that skips FastAPI's general per-request machinery where it has nothing to do.

On every request FastAPI 0.165 builds a placeholder ``Response``, two ``AsyncExitStack``s and
an exception-handling wrapper, walks the dependency tree (``solve_dependencies``, once per
node), parses the query string, headers and cookies whether the route reads them or not, and
checks each parameter's annotation again. On a cached item read that was most of what the app
spent above the bare ceiling: in-process, observability off, 103 us a request (median of 30
cycles) against 41 us for the same endpoint called by Starlette directly, and 50 us through
this route.

``LeanRoute`` is an ``APIRoute`` in everything else (matching, OpenAPI, validation and its
errors, ``dependency_overrides``). For a route of this narrow shape its ASGI app does only what
the shape needs:

- parameters: the ``Request`` and path parameters; nothing read from the query, headers,
  cookies or body (a dependency may read them itself);
- dependencies: ``async`` callables that take only the ``Request`` (the bearer-token
  dependency is one), with no dependencies of their own, no ``yield``, none repeated;
- the endpoint is ``async`` and annotated to return a ``Response``, which it returns as is.

Any other route, and any request while ``dependency_overrides`` is not empty, goes through
FastAPI's own handler. Dependencies run first, then the path parameters are validated by their
own fields, all errors together, as ``solve_dependencies`` does; exceptions go up to
Starlette's ``ExceptionMiddleware``, which renders them with the same handlers.
tests/test_routing.py sends the same requests both ways and compares the answers.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

RequestDependency = Callable[[Request], Awaitable[Any]]  # called with the request, positionally


@dataclass(frozen=True, slots=True)
class _LeanPlan:
    """What a request to a route of the lean shape needs, worked out once."""

    endpoint: Callable[..., Awaitable[Response]]
    request_name: str | None
    # (parameter name, or None for a route-level dependency whose value is unused; callable)
    dependencies: tuple[tuple[str | None, RequestDependency], ...]
    path_params: tuple[Any, ...]  # FastAPI's ModelFields


class LeanRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        plan = _lean_plan(self.dependant, self.body_field)
        # Whether requests take the lean way (while no dependency is overridden).
        self.lean = plan is not None
        if plan is not None:
            self.app = _lean_app(
                plan, general=self.app, overrides_of=self.dependency_overrides_provider
            )


def _lean_app(plan: _LeanPlan, *, general: ASGIApp, overrides_of: Any) -> ASGIApp:
    """The route's ASGI app. Exceptions go up to Starlette's ExceptionMiddleware, which renders
    them with the same handlers the general app's own wrapper would have used."""
    endpoint, request_name, dependencies = plan.endpoint, plan.request_name, plan.dependencies
    path_params = plan.path_params

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if overrides_of is not None and overrides_of.dependency_overrides:
            await general(scope, receive, send)
            return
        request = Request(scope, receive, send)
        values: dict[str, Any] = {}
        for name, dependency in dependencies:
            value = await dependency(request)
            if name is not None:
                values[name] = value
        if path_params:
            matched = request.path_params
            errors: list[Any] = []
            for field in path_params:
                # What request_params_to_args does for a path parameter, which is always
                # there (the route matched) and a string, without its per-request checks
                # of the field's type.
                value, field_errors = field.validate(
                    matched[field.alias], values, loc=("path", field.alias)
                )
                if field_errors:
                    errors.extend(field_errors)
                else:
                    values[field.name] = value
            if errors:
                raise RequestValidationError(errors)
        if request_name is not None:
            values[request_name] = request
        response = await endpoint(**values)
        if not isinstance(response, Response):
            raise TypeError(f"{endpoint.__qualname__} is annotated to return a Response")
        await response(scope, receive, send)

    return app


def _lean_plan(dependant: Dependant, body_field: Any) -> _LeanPlan | None:
    endpoint = dependant.call
    if (
        endpoint is None
        or body_field is not None
        or not _takes_only_the_request_and_path(dependant)
        or not inspect.iscoroutinefunction(endpoint)
        or not _returns_a_response(endpoint)
    ):
        return None
    dependencies: list[tuple[str | None, RequestDependency]] = []
    calls = [sub.call for sub in dependant.dependencies]
    if len(set(map(id, calls))) < len(calls):
        return None  # FastAPI calls a repeated dependency once per request: keep that to it
    for sub in dependant.dependencies:
        call = sub.call
        if (
            call is None
            or sub.dependencies
            or sub.path_params
            or sub.request_param_name is None
            or not _takes_only_the_request_and_path(sub)
            or not _is_coroutine(call)
            or not _takes_the_request_first(call, sub.request_param_name)
        ):
            return None
        dependencies.append((sub.name, call))
    return _LeanPlan(
        endpoint=endpoint,
        request_name=dependant.request_param_name,
        dependencies=tuple(dependencies),
        path_params=tuple(dependant.path_params),
    )


def _takes_only_the_request_and_path(dependant: Dependant) -> bool:
    return not (
        dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.http_connection_param_name
        or dependant.websocket_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
    )


def _is_coroutine(call: Callable[..., Any]) -> bool:
    """An ``async def`` function, or an instance whose ``__call__`` is one (not a generator:
    ``yield`` makes an async generator function, which this is False for)."""
    function = call if inspect.isroutine(call) else getattr(call, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(function)


def _returns_a_response(endpoint: Callable[..., Any]) -> bool:
    try:
        returns = inspect.signature(endpoint, eval_str=True).return_annotation
    except NameError:
        return False
    return inspect.isclass(returns) and issubclass(returns, Response)


def _takes_the_request_first(call: Callable[..., Any], request_name: str) -> bool:
    """The request is the dependency's only parameter (any other would be a query parameter);
    the lean way passes it positionally, so it must not be keyword-only."""
    first = next(iter(inspect.signature(call).parameters.values()))
    return first.name == request_name and first.kind in (
        first.POSITIONAL_ONLY,
        first.POSITIONAL_OR_KEYWORD,
    )
