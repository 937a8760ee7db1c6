"""The one place where corral errors become HTTP status codes and OpenAI-format error bodies."""

from __future__ import annotations

import json
import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from corral.errors import CorralError, RetryLaterError, RunFailedError

log = logging.getLogger("corral.gateway")

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(message: str, error_type: str, *, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    ).encode()


def error_response(err: CorralError) -> Response:
    headers: dict[str, str] = {}
    if isinstance(err, RetryLaterError):
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after_s)))
    if err.status_code == 401:
        headers["www-authenticate"] = "Bearer"
    if isinstance(err, RunFailedError):
        headers["x-should-retry"] = "false"  # the openai SDKs honour it: no automatic rerun
    return Response(
        error_body(err.message, err.error_type, code=err.code, param=err.param),
        status_code=err.status_code,
        media_type="application/json",
        headers=headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as an OpenAI-format JSON error; none as a traceback."""

    async def corral_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, CorralError)
        return error_response(exc)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if status == 404:
            detail = f"{detail}: no such route; /openapi.json and docs/api.md list the API"
        return Response(
            error_body(detail, _STATUS_TYPES.get(status, "server_error")),
            status_code=status,
            media_type="application/json",
            headers=getattr(exc, "headers", None),
        )

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        message = f"{param or 'request'}: {first['msg']}; fix this field and retry"
        return Response(
            error_body(message, "invalid_request_error", param=param),
            status_code=400,
            media_type="application/json",
        )

    async def model_error(_: Request, exc: Exception) -> Response:
        """A body checked by a pydantic model inside a route (login, keys, ...): the caller's
        mistake, answered like FastAPI's own validation errors."""
        assert isinstance(exc, ValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"]) or None
        message = f"{param or 'body'}: {first['msg']}; fix this field and retry"
        return Response(
            error_body(message, "invalid_request_error", param=param),
            status_code=400,
            media_type="application/json",
        )

    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error", exc_info=exc)
        return Response(
            error_body(
                f"internal error ({type(exc).__name__}); the server logged it, retry or report it",
                "server_error",
            ),
            status_code=500,
            media_type="application/json",
        )

    app.add_exception_handler(CorralError, corral_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ValidationError, model_error)
    app.add_exception_handler(Exception, unexpected)
