"""The evaluator's checks: one expectation against one case's output and tool calls. Part of
the hashed evaluator; nothing a mutation produces can change it."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jsonschema

from corral.agent.nodes.llm import parse_json
from corral.evolve.suites import Expectation

Judge = Callable[[str, str], Awaitable[tuple[bool, str]]]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    kind: str
    detail: str


async def check(
    expectation: Expectation, output: str, tool_calls: list[dict[str, Any]], judge: Judge | None
) -> Verdict:
    kind = expectation.kind
    if expectation.contains is not None:
        ok = expectation.contains.lower() in output.lower()
        return Verdict(
            ok, kind, f"output {'contains' if ok else 'does not contain'} {expectation.contains!r}"
        )
    if expectation.not_contains is not None:
        ok = expectation.not_contains.lower() not in output.lower()
        return Verdict(ok, kind, f"output {'avoids' if ok else 'contains'} {expectation.not_contains!r}")
    if expectation.regex is not None:
        ok = re.search(expectation.regex, output) is not None
        return Verdict(ok, kind, f"output {'matches' if ok else 'does not match'} /{expectation.regex}/")
    if expectation.json_schema is not None:
        value = parse_json(output)
        if value is None:
            return Verdict(False, kind, "output is not JSON")
        try:
            jsonschema.validate(value, expectation.json_schema)
        except jsonschema.ValidationError as exc:
            return Verdict(False, kind, f"output JSON breaks the schema: {exc.message}")
        return Verdict(True, kind, "output JSON fits the schema")
    if expectation.tool_call is not None:
        want = expectation.tool_call
        for call in tool_calls:
            given = call.get("arguments")
            args: dict[str, Any] = given if isinstance(given, dict) else {}
            if call.get("tool") == want.name and all(args.get(k) == v for k, v in want.arguments.items()):
                return Verdict(True, kind, f"called {want.name}")
        called = ", ".join(str(c.get("tool")) for c in tool_calls) or "no tool"
        return Verdict(False, kind, f"expected a call to {want.name}, got {called}")
    if expectation.action is not None:
        parsed = parse_json(output)
        action = parsed.get("action") if isinstance(parsed, dict) else None
        ok = action == expectation.action
        got = json.dumps(action) if action is not None else "no action"
        return Verdict(ok, kind, f"expected action {expectation.action!r}, got {got}")
    assert expectation.judge is not None
    if judge is None:
        return Verdict(False, kind, "this suite needs an LLM judge and none is configured")
    ok, reason = await judge(expectation.judge, output)
    return Verdict(ok, kind, f"judge: {reason}")
