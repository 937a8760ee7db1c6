"""The one error hierarchy of corral, classified by what the caller should do next.

    CorralError                    base: every error carries a message that names the fix
    ├── BadRequestError            the caller sent something wrong: fix the request (HTTP 400)
    │   ├── ContextOverflowError   the prompt does not fit the model's context (HTTP 400)
    │   ├── TooLargeError          the request body is over the size limit (HTTP 413)
    │   └── NotFoundError          no such thing: check the name (HTTP 404)
    │       └── UnknownModelError  no expert, alias or model by that name
    ├── AuthError                  missing or invalid key: re-authenticate (HTTP 401)
    │   └── ForbiddenError         valid key without the scope it needs (HTTP 403)
    ├── RetryLaterError            overloaded or warming up: retry after a delay (HTTP 429 / 503)
    │   ├── QueueFullError         the bounded queue is full (HTTP 429 + Retry-After)
    │   └── NoBackendError         no healthy replica or fallback right now (HTTP 503)
    ├── RunFailedError             an agent run failed: look at the run, resume it (HTTP 502, no retry)
    └── ConfigError                corral.yaml or a CLI argument is wrong (CLI exit 2)
        └── ModelFileError         a GGUF path is missing, unreadable or not GGUF

HTTP status codes and the OpenAI error body are mapped in exactly one place:
`corral.gateway.errors`.
"""

from __future__ import annotations


class CorralError(Exception):
    """Base class; `str(err)` is a message a user can act on."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequestError(CorralError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextOverflowError(BadRequestError):
    code = "context_length_exceeded"


class TooLargeError(BadRequestError):
    status_code = 413
    code = "request_too_large"


class NotFoundError(BadRequestError):
    status_code = 404
    code = "not_found"


class UnknownModelError(NotFoundError):
    code = "model_not_found"


class AuthError(CorralError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class ForbiddenError(AuthError):
    status_code = 403
    error_type = "permission_error"
    code = "insufficient_scope"


class RetryLaterError(CorralError):
    status_code = 503
    error_type = "server_error"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFullError(RetryLaterError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"


class NoBackendError(RetryLaterError):
    code = "no_backend"


class RunFailedError(CorralError):
    """An agent run behind a chat completion failed. Not retried by clients: a rerun would repeat
    the run's tool calls; GET /api/runs/ID shows where it failed and resume continues it."""

    status_code = 502
    error_type = "server_error"
    code = "run_failed"


class ConfigError(CorralError):
    status_code = 500
    error_type = "server_error"


class ModelFileError(ConfigError):
    pass
