"""The agent's HTTP surface: the `corral-agent` chat model, /api/workflows, /api/runs, /api/gate
and the /ws event stream. All behind the API keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import HTTPConnection
from starlette.responses import Response, StreamingResponse

from corral.agent.events import Event
from corral.agent.graph import CompiledWorkflow, WorkflowError, load_workflow
from corral.agent.nodes.base import node_types
from corral.agent.runner import RunHandle
from corral.agent.service import AgentService
from corral.agent.services import Window
from corral.agent.store import RunRecord
from corral.errors import AuthError, BadRequestError, CorralError, NotFoundError, RunFailedError
from corral.gateway.auth import Scope
from corral.gateway.proxy import CHAT, ClientGone, _unless_disconnected, parse_body, read_body, validate

AGENT_MODEL = "corral-agent"
Authorize = Callable[[HTTPConnection, Scope], Any]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunBody(_Body):
    inputs: dict[str, Any] = Field(default_factory=dict)
    session: str = ""
    version: int | None = Field(None, ge=1)
    wait: bool = Field(False, description="answer when the run has ended instead of at once")


class ReplayBody(_Body):
    inputs: dict[str, Any] = Field(default_factory=dict)


class ForkBody(_Body):
    at_seq: int = Field(ge=0, description="keep the steps up to this one")
    inputs: dict[str, Any] = Field(default_factory=dict)


class SavedMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=1_000_000)
    created_at: float | None = None


class SavedSession(BaseModel):
    """A chat session as `GET /api/sessions/ID/export` writes it; extra fields are ignored."""

    version: Literal[1] = Field(description="the export format's version")
    kind: Literal["corral-session"]
    session: str = Field(min_length=1, max_length=200)
    messages: list[SavedMessage] = Field(max_length=100_000)


class GateBody(_Body):
    gate_id: str
    reason: str = ""


def _parse(model: type[_Body], raw: bytes) -> Any:
    data = parse_body(raw) if raw.strip() else {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequestError(f"{where}: {first['msg']}", param=where) from None


async def _yaml_text(request: Request) -> str:
    raw = await read_body(request, 1024 * 1024)
    if request.headers.get("content-type", "").startswith("application/json"):
        body = parse_body(raw)
        text = body.get("yaml")
        if not isinstance(text, str):
            raise BadRequestError('send {"yaml": "<the workflow>"} or the YAML itself as text/yaml')
        return text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("the workflow must be UTF-8 text") from None


def _issue(problem: str) -> dict[str, Any]:
    """A validation problem with the node it names, so an editor can mark that node."""
    match = re.match(r"node '([^']+)'", problem)
    return {"node": match.group(1) if match else None, "message": problem}


def graph_json(workflow: CompiledWorkflow) -> dict[str, Any]:
    nodes = [
        {
            "id": n.id,
            "type": n.spec.type,
            "title": n.spec.title or n.id,
            "params": n.spec.params,
            "in": n.spec.bindings,
            "ui": n.spec.ui,
            "on_error": n.spec.on_error,
        }
        for n in workflow.nodes.values()
    ]
    edges = [
        {"from": e.source, "to": e.target, "when": e.when, "implicit": e.implicit, "back": e.back}
        for e in workflow.edges
    ]
    return {"nodes": nodes, "edges": edges, "starts": workflow.starts}


def run_json(service: AgentService, record: RunRecord, *, steps: bool = True) -> dict[str, Any]:
    out = record.to_json()
    out["active"] = record.id in service.runner.active
    if steps:
        out["steps"] = [s.to_json() for s in service.store.steps(record.id)]
        out["gates"] = service.store.gates(run_id=record.id)
    return out


def install_agent_routes(app: FastAPI, service: AgentService, authorize: Authorize) -> None:
    @app.get("/api/workflows", tags=["agent"])
    async def list_workflows(request: Request) -> dict[str, Any]:
        authorize(request, "user")
        return {"workflows": service.library.summaries(), "default": service.settings.workflow}

    @app.get("/api/workflows/node-types", tags=["agent"])
    async def list_node_types(request: Request) -> dict[str, Any]:
        """Each node type's inputs, outputs, branches and parameter schema (for the editor)."""
        authorize(request, "user")
        return {"node_types": [t.metadata() for t in node_types().values() if not t.name.startswith("test_")]}

    @app.post("/api/workflows/validate", tags=["agent"])
    async def validate_workflow(request: Request) -> dict[str, Any]:
        authorize(request, "user")
        text = await _yaml_text(request)
        try:
            workflow = load_workflow(text)
        except WorkflowError as exc:
            return {"valid": False, "problems": exc.problems, "issues": [_issue(p) for p in exc.problems]}
        return {
            "valid": True, "problems": [], "issues": [], "name": workflow.name, "graph": graph_json(workflow),
        }  # fmt: skip

    @app.get("/api/workflows/{name}", tags=["agent"])
    async def get_workflow(request: Request, name: str, version: int | None = None) -> dict[str, Any]:
        authorize(request, "user")
        workflow, number = service.library.get(name, version)
        text, _ = service.library.text(name, number)
        return {
            "name": name, "version": number, "yaml": text, "description": workflow.spec.description,
            "versions": service.store.workflow_versions(name), "graph": graph_json(workflow),
        }  # fmt: skip

    @app.post("/api/workflows/save", tags=["agent"])
    async def save_named_workflow(request: Request) -> dict[str, Any]:
        """Validate and save a definition (its own `name:`) as a new version; what the editor uses.
        Admin scope: workflows run tools."""
        return await _save(request, None)

    @app.put("/api/workflows/{name}", tags=["agent"])
    async def save_workflow(request: Request, name: str) -> dict[str, Any]:
        """Validate and save a definition under `name` as a new version. Admin scope."""
        return await _save(request, name)

    async def _save(request: Request, name: str | None) -> dict[str, Any]:
        authorize(request, "admin")
        text = await _yaml_text(request)
        workflow, version = service.library.save(text, name)
        return {"name": workflow.name, "version": version, "graph": graph_json(workflow)}

    @app.post("/api/workflows/{name}/run", tags=["agent"], status_code=202)
    async def run_workflow(request: Request, name: str) -> Response:
        authorize(request, "user")
        body: RunBody = _parse(RunBody, await read_body(request, 8 * 1024 * 1024))
        handle = service.start_run(name, body.inputs, session=body.session, version=body.version)
        return await _answer_run(service, handle, body.wait)

    @app.get("/api/runs", tags=["agent"])
    async def list_runs(
        request: Request,
        workflow: str | None = None,
        status: str | None = None,
        session: str | None = None,
        limit: int = 50,
        before: float | None = None,
        since: float | None = None,
    ) -> dict[str, Any]:
        """Past and active runs, newest first; filter by workflow, status, session and creation
        time (`since` <= created < `before`, epoch seconds)."""
        authorize(request, "user")
        limit = max(1, min(limit, 500))
        records = service.store.runs(
            workflow=workflow, status=status, session=session, limit=limit, before=before, since=since
        )
        return {"runs": [run_json(service, r, steps=False) for r in records]}

    @app.get("/api/runs/{run_id}", tags=["agent"])
    async def get_run(request: Request, run_id: str) -> dict[str, Any]:
        authorize(request, "user")
        return run_json(service, service.runner._record(run_id))

    @app.post("/api/runs/{run_id}/resume", tags=["agent"], status_code=202)
    async def resume_run(request: Request, run_id: str) -> Response:
        authorize(request, "user")
        return await _answer_run(service, service.runner.resume(run_id), _wants_wait(request))

    @app.post("/api/runs/{run_id}/replay", tags=["agent"], status_code=202)
    async def replay_run(request: Request, run_id: str) -> Response:
        authorize(request, "user")
        body: ReplayBody = _parse(ReplayBody, await read_body(request, 8 * 1024 * 1024))
        return await _answer_run(service, service.runner.replay(run_id, body.inputs), _wants_wait(request))

    @app.post("/api/runs/{run_id}/fork", tags=["agent"], status_code=202)
    async def fork_run(request: Request, run_id: str) -> Response:
        authorize(request, "user")
        body: ForkBody = _parse(ForkBody, await read_body(request, 8 * 1024 * 1024))
        handle = service.runner.fork(run_id, body.at_seq, body.inputs)
        return await _answer_run(service, handle, _wants_wait(request))

    @app.post("/api/runs/{run_id}/cancel", tags=["agent"])
    async def cancel_run(request: Request, run_id: str) -> dict[str, Any]:
        authorize(request, "user")
        service.runner._record(run_id)
        return {"run_id": run_id, "cancelled": service.runner.cancel(run_id)}

    def window() -> Window:
        if service.services.window is None:
            raise NotFoundError("sessions are off: this corral runs without an embedding expert")
        return service.services.window

    @app.get("/api/sessions", tags=["agent"])
    async def list_sessions(request: Request) -> dict[str, Any]:
        """Chat sessions with their message counts, most recently active first."""
        authorize(request, "user")
        return {"sessions": window().summaries()}

    @app.get("/api/sessions/{session}", tags=["agent"])
    async def get_session(request: Request, session: str) -> dict[str, Any]:
        authorize(request, "user")
        return {"id": session, "messages": window().messages(session)}

    @app.delete("/api/sessions/{session}", tags=["agent"])
    async def delete_session(request: Request, session: str) -> dict[str, Any]:
        """Forget a session's messages (long-term memories stay)."""
        authorize(request, "user")
        return {"id": session, "deleted": window().clear(session)}

    @app.get("/api/sessions/{session}/export", tags=["agent"])
    async def export_session(request: Request, session: str) -> dict[str, Any]:
        """The session's state as one JSON document: its messages and its runs."""
        authorize(request, "user")
        messages = window().messages(session)
        if not messages:
            raise NotFoundError(f"no session {session!r} with messages; GET /api/sessions lists them")
        runs = [r.to_json() for r in service.store.runs(session=session, limit=500)]
        return {
            "version": 1, "kind": "corral-session", "session": session, "exported_at": time.time(),
            "messages": messages, "runs": runs,
        }  # fmt: skip

    @app.post("/api/sessions/import", tags=["agent"], status_code=201)
    async def import_session(request: Request) -> dict[str, Any]:
        """Load a saved session; an id already in use gets a new one (nothing is overwritten)."""
        authorize(request, "user")
        data = parse_body(await read_body(request, 16 * 1024 * 1024))
        try:
            saved = SavedSession.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise BadRequestError(
                f"not a saved corral session ({where}: {first['msg']}); use a file from Save state",
                param=where,
            ) from None
        taken = {s["id"] for s in window().summaries()}
        session, n = saved.session, 2
        while session in taken:
            session, n = f"{saved.session}-{n}", n + 1
        count = window().load(session, [m.model_dump() for m in saved.messages])
        return {"session": session, "messages": count}

    @app.get("/api/gates", tags=["agent"])
    async def list_gates(request: Request) -> dict[str, Any]:
        authorize(request, "user")
        return {"gates": service.services.gates.pending() if service.services.gates else []}

    @app.post("/api/gate/approve", tags=["agent"])
    async def approve(request: Request) -> dict[str, Any]:
        return await _decide(request, True)

    @app.post("/api/gate/deny", tags=["agent"])
    async def deny(request: Request) -> dict[str, Any]:
        return await _decide(request, False)

    async def _decide(request: Request, approve: bool) -> dict[str, Any]:
        authorize(request, "user")
        body: GateBody = _parse(GateBody, await read_body(request, 64 * 1024))
        gates = service.services.gates
        assert gates is not None
        return gates.decide(body.gate_id, approve, by="api", reason=body.reason)

    @app.websocket("/ws")
    async def events_socket(socket: WebSocket) -> None:
        await _socket(socket, service, authorize)


def _wants_wait(request: Request) -> bool:
    return request.query_params.get("wait", "").lower() in ("1", "true", "yes")


async def _answer_run(service: AgentService, handle: RunHandle, wait: bool) -> Response:
    if not wait:
        body = {"run_id": handle.run_id, "status": "running", "events": f"/ws (run {handle.run_id})"}
        return Response(json.dumps(body), status_code=202, media_type="application/json")
    record = await handle.result()
    return Response(json.dumps(run_json(service, record)), status_code=200, media_type="application/json")


# --- the corral-agent chat model ---------------------------------------------------------------


async def agent_chat(request: Request, service: AgentService, body: dict[str, Any]) -> Response:
    """/v1/chat/completions with model `corral-agent`: the default workflow answers."""
    validate(CHAT, body)
    session = str(body.get("user") or request.headers.get("x-corral-session") or "")
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    created = int(time.time())
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if body.get("stream"):
        subscription = service.bus.subscribe()
        handle = service.chat(messages, session)
        stream = _agent_stream(handle, subscription, completion_id, created)
        headers = {"x-corral-run": handle.run_id, "cache-control": "no-cache"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    handle = service.chat(messages, session)
    try:
        record = await _unless_disconnected(request, handle.result())
    except ClientGone:
        handle.cancel()
        return Response(status_code=499)
    answer = _answer_of(record)
    payload = {
        "id": completion_id, "object": "chat.completion", "created": created, "model": AGENT_MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
        ],
        "corral": {"run_id": record.id, "steps": (record.outputs or {}).get("steps", [])},
    }  # fmt: skip
    return Response(json.dumps(payload), media_type="application/json", headers={"x-corral-run": record.id})


def _answer_of(record: RunRecord) -> str:
    if record.status != "succeeded":
        raise RunFailedError(
            f"the agent run {record.id} {record.status}: {record.error}; GET /api/runs/{record.id} shows "
            f"where, and POST /api/runs/{record.id}/resume continues it"
        )
    return str((record.outputs or {}).get("answer", ""))


async def _agent_stream(
    handle: RunHandle, subscription: Any, completion_id: str, created: int
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": AGENT_MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }  # fmt: skip
        if extra:
            data["corral"] = extra
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    types: dict[str, str] = {}
    streamed: list[str] = []
    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""}, extra={"run_id": handle.run_id})
        async for event in subscription:
            if event.data.get("root_run") != handle.run_id and event.run_id != handle.run_id:
                continue
            if event.type == "node.started":
                types[event.node_id] = str(event.data.get("type", ""))
            elif (
                event.type == "node.token"
                and types.get(event.node_id) == "llm"
                and event.run_id == handle.run_id
            ):
                streamed.append(event.data["text"])
                yield chunk({"content": event.data["text"]})
            elif event.type == "gate.waiting":
                yield chunk(
                    {}, extra={"gate": {k: event.data.get(k) for k in ("gate_id", "title", "details")}}
                )
            elif event.type == "node.output" and types.get(event.node_id) == "tool":
                yield chunk({}, extra={"step": (event.data.get("outputs") or {}).get("step")})
            elif (
                event.type in ("run.finished", "run.failed", "run.cancelled")
                and event.run_id == handle.run_id
            ):
                if event.type != "run.finished":
                    message = f"[the agent run {event.type.split('.')[1]}: {event.data.get('error')}]"
                    yield chunk({"content": message}, "stop", {"run_id": handle.run_id, "error": True})
                else:
                    answer = str((event.data.get("outputs") or {}).get("answer", ""))
                    if not streamed and answer:
                        yield chunk({"content": answer})
                    yield chunk({}, "stop", {"run_id": handle.run_id})
                finished = True
                break
        yield b"data: [DONE]\n\n"
    finally:
        subscription.close()
        if not finished:
            handle.cancel()  # the client went away: stop the run (and its generation)


# --- the WebSocket ---------------------------------------------------------------------------


async def _socket(socket: WebSocket, service: AgentService, authorize: Authorize) -> None:
    """Events out; chat messages, workflow runs, approvals and cancels in. Auth by header or
    `?token=` (browsers cannot set headers on a WebSocket)."""
    try:
        authorize(socket, "user")
    except AuthError as exc:
        # Accept, then close with 1008 and the reason: a refused handshake would reach a browser
        # as a bare 1006 with no reason at all.
        await socket.accept()
        await socket.close(code=1008, reason=exc.message[:120])
        return
    await socket.accept()
    wanted: dict[str, Any] = {"runs": None, "tokens": True}
    subscription = service.bus.subscribe()

    async def pump() -> None:
        async for event in subscription:
            if not _wanted(event, wanted):
                continue
            await socket.send_text(json.dumps({"type": "event", "event": event.to_json()}, default=str))

    sender = asyncio.create_task(pump())
    try:
        while True:
            try:
                message = await socket.receive_json()
            except (ValueError, KeyError):
                await socket.send_json(
                    {"type": "error", "message": 'send JSON objects like {"type": "chat"}'}
                )
                continue
            reply = await _handle_message(service, message, wanted)
            if isinstance(message, dict) and isinstance(message.get("id"), (int, str)):
                reply["id"] = message["id"]  # lets a client match replies to its requests
            await socket.send_text(json.dumps(reply, default=str))
    except WebSocketDisconnect:
        pass
    finally:
        subscription.close()
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender


def _wanted(event: Event, wanted: dict[str, Any]) -> bool:
    if not wanted["tokens"] and event.type == "node.token":
        return False
    runs = wanted["runs"]
    return runs is None or event.run_id in runs or event.data.get("root_run") in runs


async def _handle_message(service: AgentService, message: Any, wanted: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return {
            "type": "error",
            "message": 'each message needs a "type": subscribe, chat, run, approve, deny, cancel',
        }
    kind = message["type"]
    try:
        if kind == "subscribe":
            runs = message.get("runs")
            wanted["runs"] = set(runs) if isinstance(runs, list) else None
            wanted["tokens"] = bool(message.get("tokens", True))
            return {"type": "subscribed", "runs": runs, "tokens": wanted["tokens"]}
        if kind == "chat":
            messages = message.get("messages")
            if messages is None and isinstance(message.get("text"), str):
                messages = [{"role": "user", "content": message["text"]}]
            if not isinstance(messages, list) or not messages:
                raise BadRequestError('chat needs "text" or a non-empty "messages" list')
            handle = service.chat(messages, str(message.get("session") or ""))
            return {"type": "run", "run_id": handle.run_id}
        if kind == "run":
            inputs = message.get("inputs") or {}
            if not isinstance(inputs, dict):
                raise BadRequestError('"inputs" must be an object')
            handle = service.start_run(
                str(message.get("workflow") or ""), inputs, session=str(message.get("session") or "")
            )
            return {"type": "run", "run_id": handle.run_id}
        if kind in ("approve", "deny"):
            gates = service.services.gates
            assert gates is not None
            result = gates.decide(
                str(message.get("gate_id") or ""),
                kind == "approve",
                "websocket",
                str(message.get("reason") or ""),
            )
            return {"type": "gate", **result}
        if kind == "cancel":
            run_id = str(message.get("run_id") or "")
            return {"type": "cancelled", "run_id": run_id, "cancelled": service.runner.cancel(run_id)}
        return {
            "type": "error",
            "message": f"unknown message type {kind!r}; use subscribe, chat, run, approve, deny or cancel",
        }
    except CorralError as exc:
        return {"type": "error", "message": exc.message, "status": exc.status_code}
