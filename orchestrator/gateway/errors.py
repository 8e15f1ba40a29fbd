"""Every error the gateway answers is `{"error": {"code", "message"}}`, with a message naming what
is wrong; nothing else (no traceback, no framework default shape) ever reaches a client."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.log import get_logger

log = get_logger("gateway")

_STATUS_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """What every 4xx and 5xx answer holds."""

    error: ErrorDetail


class ApiError(Exception):
    """An answer other than success: raised anywhere in a route, rendered by the handler."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def not_found(conversation_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no conversation {conversation_id[:200]!r}")


def unauthenticated(message: str) -> ApiError:
    return ApiError(
        401, "unauthenticated", message, headers={"WWW-Authenticate": 'Bearer realm="agent"'}
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def describe_validation(errors: list[Any]) -> tuple[str, str]:
    """(code, message) for FastAPI's validation errors: which field, and what is wrong with it."""
    problems = []
    code = "invalid_request"
    for error in errors[:5]:
        kind = str(error.get("type", ""))
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        if kind == "json_invalid":
            context = error.get("ctx") or {}
            return "invalid_json", f"the body is not valid JSON: {context.get('error', kind)}"
        where = ".".join(location)
        message = str(error.get("msg", "is invalid"))
        if kind == "missing":
            problems.append(f"{where or 'the body'}: is required")
        elif kind == "extra_forbidden":
            problems.append(f"{where}: is not a field of this request")
        elif kind in {"model_attributes_type", "dict_type"} and not where:
            problems.append("the body must be a JSON object")
        else:
            problems.append(f"{where or 'the body'}: {message}")
    return code, "; ".join(problems) or "the request is invalid"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        code, message = describe_validation(list(error.errors()))
        return error_response(400, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(error.status_code, "error")
        if error.status_code == 404:
            message = f"no such resource: {request.url.path[:200]}"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path[:200]}"
        else:
            message = str(error.detail)
        headers = dict(error.headers) if error.headers else None
        return error_response(error.status_code, code, message, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error(
            "request failed",
            method=request.method,
            path=request.url.path,
            error=f"{type(error).__name__}: {error}",
            exc_info=error,
        )
        return error_response(500, "internal", "internal error; the gateway's log has the details")
