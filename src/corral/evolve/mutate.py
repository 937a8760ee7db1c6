"""Reflective mutation: the mutating model reads a prompt and the feedback of the cases it failed,
and proposes a revised prompt with its rationale. A reply with no usable prompt, an unchanged
prompt or one over the token cap is a failed attempt (recorded, never a crash)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from corral.agent.llm import LLMClient, LLMRequest
from corral.agent.nodes.llm import parse_json
from corral.evolve.evaluate import estimate_tokens

MUTATION_SCHEMA = {
    "type": "object",
    "properties": {
        "rationale": {"type": "string", "minLength": 1, "maxLength": 160},
        "prompt": {"type": "string", "minLength": 1},
    },
    "required": ["rationale", "prompt"],
}

INSTRUCTIONS = (
    "You improve the instructions (the system prompt) of an AI assistant. You are shown the current "
    "prompt and test cases it failed, with what the assistant answered and why that failed. Write a "
    "revised prompt that fixes those failures without breaking anything else; keep it short and "
    "general (do not copy the test answers into it). Reply with one JSON object with two keys: "
    '"rationale", one sentence on what you changed and why, and "prompt", the complete revised prompt.'
)
PLACEHOLDER = re.compile(r"^\s*<[^<>]{0,80}>\s*$")  # a copied template slot, not a prompt


@dataclass(frozen=True)
class Failure:
    case_id: str
    input: str
    output: str
    feedback: str


@dataclass(frozen=True)
class Mutation:
    prompt: str | None  # None: the attempt failed (see error)
    rationale: str
    error: str
    raw: str
    calls: int
    tokens: int


def token_estimate(text: str) -> int:
    return max(1, len(text) // 4)


def meta_prompt(role: str, current: str, failures: Sequence[Failure]) -> list[dict[str, str]]:
    shown = []
    for f in failures:
        shown.append(
            f"Case {f.case_id}\nInput: {f.input[:500]}\nAnswer: {f.output[:300]}\n"
            f"Why it failed: {f.feedback[:300]}"
        )
    user = f"Role: {role}\n\nCurrent prompt:\n<<<\n{current}\n>>>\n\nFailed cases:\n\n" + "\n\n".join(shown)
    return [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": user}]


async def reflect(
    llm: LLMClient,
    role: str,
    current: str,
    failures: Sequence[Failure],
    *,
    max_prompt_tokens: int = 256,
    model: str = "auto",
    seed: int = 0,
) -> Mutation:
    """One reflective mutation of `current` (one LLM call)."""
    request = LLMRequest(
        meta_prompt(role, current, failures), model=model, max_tokens=max_prompt_tokens + 80,
        temperature=0.9, json_schema=MUTATION_SCHEMA, extra={"seed": seed},
    )  # fmt: skip
    try:
        result = await llm.complete(request)
    except Exception as exc:  # the model call failed: a failed attempt, the campaign goes on
        return Mutation(None, "", f"the mutating model failed: {type(exc).__name__}: {exc}", "", 1, 0)
    tokens = estimate_tokens(request, result)
    prompt, rationale = parse_reply(result.text)
    error = ""
    if not prompt or PLACEHOLDER.match(prompt):
        error = f"the mutating model returned no usable prompt ({result.text[:120]!r})"
    elif prompt.strip() == current.strip():
        error = "the mutating model returned the prompt unchanged"
    elif token_estimate(prompt) > max_prompt_tokens:
        error = f"the revised prompt is ~{token_estimate(prompt)} tokens, over the cap of {max_prompt_tokens}"
    if error:
        return Mutation(None, rationale, error, result.text[:2000], 1, tokens)
    return Mutation(prompt.strip(), rationale or "(no rationale given)", "", result.text[:2000], 1, tokens)


def parse_reply(text: str) -> tuple[str, str]:
    """(prompt, rationale) from a JSON reply, or from `PROMPT:` / `RATIONALE:` sections; ("", "")
    when neither is there."""
    value = parse_json(text)
    if isinstance(value, dict):
        prompt, rationale = value.get("prompt"), value.get("rationale")
        if isinstance(prompt, str):
            return prompt.strip(), str(rationale or "").strip()
    match = re.search(r"prompt\s*:\s*(.+?)(?:\n\s*rationale\s*:|\Z)", text, re.IGNORECASE | re.DOTALL)
    if match:
        why = re.search(r"rationale\s*:\s*(.+)", text, re.IGNORECASE | re.DOTALL)
        return match.group(1).strip().strip("<>").strip(), (why.group(1).strip() if why else "")
    return "", ""


def describe_input(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
