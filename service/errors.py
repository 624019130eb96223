"""The application's error tree and the one place that renders every error.

Every error leaves the service as RFC 9457 problem details (``application/problem+json``) with a
stable machine-readable ``code``, so clients branch on ``code`` and never parse ``detail``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import orjson
import sqlalchemy.exc
import sqlalchemy.orm.exc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from service.routing import NumericIdRoute

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://glasshouse.dev/problems/"

log = structlog.get_logger(__name__)


class ProblemResponse(Response):
    media_type = PROBLEM_CONTENT_TYPE

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class AppError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}


class NotFoundError(AppError):
    status = 404
    code = "not_found"
    title = "Not found"


class ConflictError(AppError):
    status = 409
    code = "conflict"
    title = "Conflict"


class EmailTakenError(ConflictError):
    code = "email_taken"
    title = "Email already registered"


class LastAdminError(ConflictError):
    code = "last_admin"
    title = "The last active admin cannot be removed"


class AuthenticationError(AppError):
    status = 401
    code = "not_authenticated"
    title = "Not authenticated"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class InvalidCredentialsError(AuthenticationError):
    code = "invalid_credentials"
    title = "Incorrect email or password"


class InvalidTokenError(AuthenticationError):
    code = "invalid_token"
    title = "Invalid or expired token"


class InvalidApiKeyError(AuthenticationError):
    code = "invalid_api_key"
    title = "Invalid, expired or revoked API key"


class AmbiguousCredentialsError(AuthenticationError):
    code = "ambiguous_credentials"
    title = "Send either a bearer token or an API key, not both"


class InsufficientScopeError(AppError):
    status = 403
    code = "insufficient_scope"
    title = "The API key's scopes do not allow this"


class RefreshTokenReusedError(AuthenticationError):
    code = "refresh_token_reused"
    title = "Refresh token already used; the session has been revoked"


class InactiveUserError(AppError):
    status = 403
    code = "inactive_user"
    title = "User is inactive"


class ForbiddenError(AppError):
    status = 403
    code = "forbidden"
    title = "Not allowed"


class WrongPasswordError(AppError):
    status = 400
    code = "wrong_password"
    title = "Current password is incorrect"


class TooManyRequestsError(AppError):
    status = 429
    code = "too_many_requests"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class DatabaseUnavailableError(AppError):
    status = 503
    code = "database_unavailable"
    title = "Database unavailable"
    retry_after_seconds = 5

    def __init__(self) -> None:
        super().__init__(
            "The database cannot be reached right now; retry shortly.",
            headers={"Retry-After": str(self.retry_after_seconds)},
        )


class ServerBusyError(AppError):
    """Capacity, not a rate limit: this worker is already running as many slow operations of
    the kind as it allows, so the request is refused at once rather than queued."""

    status = 503
    code = "server_busy"
    title = "Server busy"
    retry_after_seconds = 1

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(self.retry_after_seconds)})


class PayloadTooLargeError(AppError):
    status = 413
    code = "payload_too_large"
    title = "Request body too large"


class UnsupportedMediaTypeError(AppError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class GoneError(AppError):
    status = 410
    code = "gone"
    title = "Gone"


_HTTP_STATUS_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("not_authenticated", "Not authenticated"),
    403: ("forbidden", "Not allowed"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("too_many_requests", "Too many requests"),
}


def problem_body(
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    instance: str,
    request_id: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
    }
    if request_id:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    return body


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> ProblemResponse:
    body = problem_body(
        status=status,
        code=code,
        title=title,
        detail=detail,
        instance=request.url.path,
        request_id=getattr(request.state, "request_id", None),
        extra=extra,
    )
    return ProblemResponse(body, status_code=status, headers=headers)


class InternalError(AppError):
    status = 500
    code = "internal_error"
    title = "Internal server error"

    def __init__(self) -> None:
        super().__init__("An unexpected error occurred. Quote the request_id when reporting it.")


def raw_problem(
    error: AppError, *, path: str, request_id: str | None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of an error, for pure ASGI middleware that answers by itself."""
    body = orjson.dumps(
        problem_body(
            status=error.status,
            code=error.code,
            title=error.title,
            detail=error.detail,
            instance=path,
            request_id=request_id,
        )
    )
    headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    return error.status, headers, body


async def _app_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, AppError)
    return problem_response(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        headers=exc.headers,
    )


async def _http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    code, title = _HTTP_STATUS_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        # Starlette names only the first matching route's methods; a path served by several
        # routes (GET and PATCH /items/{id} are two) must list them all.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem_response(
        request,
        status=exc.status_code,
        code=code,
        title=title,
        detail=detail,
        headers=headers or None,
    )


def _allowed_methods(request: Request) -> list[str]:
    allowed: set[str] = set()
    probe = {**request.scope, "method": "__none__"}
    for matcher, route in _flat_routes(request.app.router.routes):
        match, child_scope = matcher.matches(probe)
        if isinstance(route, NumericIdRoute) and not route.accepts(
            child_scope.get("path_params", {})
        ):
            continue
        if match is not Match.NONE:
            allowed |= set(getattr(route, "methods", None) or ())
    if "GET" in allowed:
        allowed.add("HEAD")
    return sorted(allowed)


def _flat_routes(routes: Sequence[Any]) -> list[tuple[Any, Any]]:
    """(what matches the full path, the route with its methods), through included routers."""
    flat: list[tuple[Any, Any]] = []
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            flat += [(context, context.original_route) for context in contexts()]
        else:
            flat.append((route, route))
    return flat


def _is_json_content_type(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def _validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors: Sequence[Any] = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return problem_response(
            request,
            status=400,
            code="malformed_json",
            title="Malformed JSON",
            detail="The request body is not valid JSON.",
        )
    body_is_whole_object_error = any(
        tuple(error.get("loc", ())) == ("body",) and error.get("type") == "model_attributes_type"
        for error in errors
    )
    if body_is_whole_object_error and not _is_json_content_type(request):
        return problem_response(
            request,
            status=415,
            code="unsupported_media_type",
            title="Unsupported media type",
            detail="Send the request body as application/json.",
        )
    return problem_response(
        request,
        status=422,
        code="validation_failed",
        title="Validation failed",
        detail="The request did not validate; see errors.",
        extra={"errors": [_public_error(error) for error in errors]},
    )


def _public_error(error: Any) -> dict[str, Any]:
    # The rejected input is left out: it may be a password.
    return {
        "loc": [str(part) for part in error.get("loc", ())],
        "msg": str(error.get("msg", "")),
        "type": str(error.get("type", "")),
    }


async def _unexpected_error(request: Request, exc: Exception) -> ProblemResponse:
    # Reached only when RequestContextMiddleware is not installed (it catches first).
    log.error("unhandled_exception", exc_info=exc)
    return await _app_error(request, InternalError())


def _is_connection_failure(exc: BaseException) -> bool:
    """Errors that mean "the database is unreachable", not "the query is wrong"."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlalchemy.exc.TimeoutError | sqlalchemy.exc.InterfaceError):
        return True  # pool exhausted or connection closed under us
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.DBAPIError):
        return isinstance(exc.orig, OSError | TimeoutError) or _is_asyncpg_connection_error(exc)
    return isinstance(exc, OSError | TimeoutError)


def _is_asyncpg_connection_error(exc: sqlalchemy.exc.DBAPIError) -> bool:
    name = type(getattr(exc.orig, "__cause__", None) or exc.orig).__name__
    return name in {
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        "CannotConnectNowError",
        "InterfaceError",
        "TooManyConnectionsError",
    }


async def _database_error(request: Request, exc: Exception) -> ProblemResponse:
    if isinstance(exc, sqlalchemy.orm.exc.StaleDataError):
        # A concurrent request deleted the row between this one's read and its write.
        return await _app_error(request, NotFoundError())
    if not _is_connection_failure(exc):
        return await _unexpected_error(request, exc)
    log.warning("database_unavailable", error=f"{type(exc).__name__}", path=request.url.path)
    return await _app_error(request, DatabaseUnavailableError())


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(sqlalchemy.exc.SQLAlchemyError, _database_error)
    app.add_exception_handler(OSError, _database_error)
    app.add_exception_handler(TimeoutError, _database_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details: every error the API returns has this shape.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "instance", "code"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "code": {"type": "string", "description": "Stable, machine-readable error code."},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}

_DESCRIPTIONS = {
    "400": "Malformed request (e.g. invalid JSON)",
    "401": "Missing, invalid or expired token",
    "403": "Not allowed, or inactive user",
    "404": "Not found",
    "409": "Conflict",
    "413": "Request body too large",
    "415": "Unsupported media type",
    "422": "Validation failed",
    "429": "Too many requests",
    "500": "Internal error",
    "503": "Database unavailable or server busy (see Retry-After)",
}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Makes the OpenAPI document tell the truth about errors: every error response is
    ``application/problem+json`` with the Problem schema, and each operation lists the
    statuses it can really return (FastAPI only knows its own 422)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            statuses = {"500"}
            if path.startswith("/api/"):
                statuses |= {"422", "503"}
            if "requestBody" in operation:
                statuses |= {"400", "413", "415"}
            if operation.get("security"):
                statuses |= {"401", "403"}
            if "{" in path:
                statuses.add("404")
            responses = operation.setdefault("responses", {})
            for status in statuses | {code for code in responses if code[0] in "45"}:
                response = responses.setdefault(status, {})
                response.setdefault("description", _DESCRIPTIONS.get(status, "Error"))
                if status != "503" or path.startswith("/api/"):
                    response["content"] = problem
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    return schema
