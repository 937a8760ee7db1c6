"""A GBNF grammar that admits exactly one compact tool call: {"tool":"NAME","arguments":{...}}.

Why our own instead of llama-server's JSON-schema conversion: that grammar allows free whitespace
(newlines and up to 20 tabs between tokens), and small models such as the bundled 270M base
model fill their token budget with tabs before they reach the call. This grammar leaves no
whitespace to choose, so a call costs the fewest tokens and always finishes. It covers the schema
subset tools use (objects, strings, numbers, integers, booleans, enums, consts, arrays); anything
else falls back to a generic compact JSON value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

BASE_RULES = r"""
string ::= "\"" char* "\""
nonempty ::= "\"" char+ "\""
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])
integer ::= "-"? ("0" | [1-9] [0-9]*)
number ::= integer ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
boolean ::= "true" | "false"
value ::= object | array | string | number | boolean | "null"
object ::= "{" (string ":" value ("," string ":" value)*)? "}"
array ::= "[" (value ("," value)*)? "]"
"""


def literal(text: str) -> str:
    """A GBNF string literal for `text`."""
    return json.dumps(text)


class _Builder:
    def __init__(self) -> None:
        self.rules: list[str] = []
        self._count = 0

    def rule(self, hint: str, body: str) -> str:
        self._count += 1
        name = f"{re.sub(r'[^a-z0-9]', '-', hint.lower())[:24] or 'r'}-{self._count}"
        self.rules.append(f"{name} ::= {body}")
        return name

    def value(self, schema: Any, hint: str) -> str:
        if not isinstance(schema, Mapping):
            return "value"
        if "const" in schema:
            return literal(json.dumps(schema["const"], separators=(",", ":")))
        if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
            options = " | ".join(literal(json.dumps(v, separators=(",", ":"))) for v in schema["enum"])
            return self.rule(hint, options)
        kind = schema.get("type")
        if isinstance(kind, list):
            alternatives = [self.value({**schema, "type": k}, hint) for k in kind]
            return self.rule(hint, " | ".join(alternatives))
        if kind == "string":
            return "nonempty" if int(schema.get("minLength", 0) or 0) > 0 else "string"
        if kind == "integer":
            return "integer"
        if kind == "number":
            return "number"
        if kind == "boolean":
            return "boolean"
        if kind == "null":
            return '"null"'
        if kind == "array":
            item = self.value(schema.get("items", {}), hint + "-item")
            return self.rule(hint, f'"[" ({item} ("," {item})*)? "]"')
        if kind == "object" or "properties" in schema:
            return self.object(schema, hint)
        return "value"

    def object(self, schema: Mapping[str, Any], hint: str) -> str:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        if not properties:
            return '"{}"' if schema.get("additionalProperties") is False else "object"
        required = [p for p in properties if p in set(schema.get("required") or [])]
        optional = [p for p in properties if p not in required]
        parts: list[str] = []
        for index, name in enumerate(required):
            key = literal(("," if index else "") + json.dumps(name) + ":")
            parts.append(f"{key} {self.value(properties[name], f'{hint}-{name}')}")
        for name in optional:
            value = self.value(properties[name], f"{hint}-{name}")
            if required or parts:
                parts.append(f"({literal(',' + json.dumps(name) + ':')} {value})?")
            else:  # the first optional property has no leading comma; keep it simple: all-or-in-order
                parts.append(f"({literal(json.dumps(name) + ':')} {value})?")
        if not required and len(optional) > 1:
            # with no required property, later optional ones need a comma only after an earlier one
            first = optional[0]
            rest = " ".join(
                f"({literal(',' + json.dumps(n) + ':')} {self.value(properties[n], f'{hint}-{n}')})?"
                for n in optional[1:]
            )
            head = f"{literal(json.dumps(first) + ':')} {self.value(properties[first], f'{hint}-{first}')}"
            body = f'"{{" ({head} {rest})? "}}"'
            return self.rule(hint, body)
        return self.rule(hint, '"{" ' + " ".join(parts) + ' "}"')


def tool_call_grammar(tools: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """A grammar for one call of one of `tools` (name, JSON schema of its arguments)."""
    builder = _Builder()
    calls = []
    for name, schema in tools:
        arguments = builder.value(schema, f"args-{name}")
        head = literal('{"tool":' + json.dumps(name) + ',"arguments":')
        calls.append(builder.rule(f"call-{name}", f'{head} {arguments} "}}"'))
    root = "root ::= " + " | ".join(calls)
    return "\n".join([root, *builder.rules]) + BASE_RULES
