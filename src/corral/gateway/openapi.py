"""The OpenAPI document made true: request bodies of the routes that read their body themselves
(the OpenAI routes, keys, login, workflows, runs, gates, sessions) and the error answers every
route can give (400/401/403/404/413/429/503 in the OpenAI error format, never FastAPI's 422)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERRORS = {
    "400": "the request is wrong; the message says what to fix",
    "401": "missing, invalid or revoked API key",
    "403": "the key lacks the scope this route needs, or a cross-origin cookie",
    "404": "no such thing",
    "413": "the body is over server.max_body_bytes",
    "429": "rate limit or queue full; see Retry-After",
    "503": "no ready replica yet; see Retry-After",
}
_PUBLIC = {"/health", "/ready"}

_MESSAGES = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
            "content": {"type": "string"},
        },
    },
}
_GENERATION = {
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "stream": {"type": "boolean"},
    "user": {"type": "string"},
}
_MODEL = {"type": "string", "description": "an expert, alias, `auto` or `corral-agent`"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _object(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or [], **extra}


_WORKFLOW_TEXT = {
    "required": True,
    "content": {
        "text/yaml": {"schema": {"type": "string"}},
        "application/json": {"schema": _object({"yaml": {"type": "string"}}, ["yaml"])},
    },
}
_INPUTS = {"type": "object", "additionalProperties": True}

BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/chat/completions"): _json(
        _object({"model": _MODEL, "messages": _MESSAGES, **_GENERATION}, ["model", "messages"])
    ),
    ("post", "/v1/completions"): _json(
        _object({"model": _MODEL, "prompt": {"type": "string"}, **_GENERATION}, ["model", "prompt"])
    ),
    ("post", "/v1/embeddings"): _json(
        _object(
            {
                "model": _MODEL,
                "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            },
            ["model", "input"],
        )
    ),
    ("post", "/api/keys"): _json(
        _object(
            {
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "scope": {"type": "string", "enum": ["user", "admin"]},
            },
            ["name"],
            additionalProperties=False,
        )
    ),
    ("post", "/api/login"): _json(
        _object(
            {"key": {"type": "string", "minLength": 1, "maxLength": 512}}, ["key"], additionalProperties=False
        )
    ),
    ("post", "/api/gate/approve"): _json(
        _object({"gate_id": {"type": "string"}, "reason": {"type": "string"}}, ["gate_id"])
    ),
    ("post", "/api/gate/deny"): _json(
        _object({"gate_id": {"type": "string"}, "reason": {"type": "string"}}, ["gate_id"])
    ),
    ("post", "/api/workflows/validate"): _WORKFLOW_TEXT,
    ("post", "/api/workflows/save"): _WORKFLOW_TEXT,
    ("put", "/api/workflows/{name}"): _WORKFLOW_TEXT,
    ("post", "/api/workflows/{name}/run"): _json(
        _object(
            {
                "inputs": _INPUTS,
                "session": {"type": "string"},
                "version": {"type": ["integer", "null"], "minimum": 1},
                "wait": {"type": "boolean"},
            },
            additionalProperties=False,
        )
    ),
    ("post", "/api/runs/{run_id}/replay"): _json(_object({"inputs": _INPUTS}, additionalProperties=False)),
    ("post", "/api/runs/{run_id}/fork"): _json(
        _object({"at_seq": {"type": "integer", "minimum": 0}, "inputs": _INPUTS}, ["at_seq"])
    ),
    ("post", "/api/sessions/import"): _json(
        _object(
            {
                "version": {"const": 1},
                "kind": {"const": "corral-session"},
                "session": {"type": "string", "minLength": 1, "maxLength": 200},
                "messages": {
                    "type": "array",
                    "items": _object(
                        {
                            "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
                            "content": {"type": "string"},
                        },
                        ["role", "content"],
                    ),
                },
            },
            ["version", "kind", "session", "messages"],
        )
    ),
}


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add BODIES and the error answers to a generated OpenAPI document (in place)."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR
    ref = {"$ref": "#/components/schemas/Error"}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            body = BODIES.get((method, path))
            if body is not None and "requestBody" not in operation:
                operation["requestBody"] = body
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # validation errors are answered 400, in the error format
            for code, description in _ERRORS.items():
                if path in _PUBLIC and code not in ("429", "503"):
                    continue
                responses.setdefault(
                    code, {"description": description, "content": {"application/json": {"schema": ref}}}
                )
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
