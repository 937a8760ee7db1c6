"""Evaluation suites: YAML files of test cases for one prompt role, loaded with line-numbered
errors, merged from the shipped suites and `$CORRAL_HOME/evolve/suites/`, and hashed.

A suite is `<name>.yaml` (header and cases) plus optional `<name>.d/*.yaml`, one case per file, so
a new case is added by writing one new file, never by rewriting the suite.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corral.config import _line_of
from corral.errors import ConfigError, NotFoundError

SHIPPED = Path(__file__).parent / "suites"
M = TypeVar("M", bound=BaseModel)
Split = Literal["train", "validation", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "validation", "heldout")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolCallExpect(_Strict):
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict, description="arguments that must match")


class Expectation(_Strict):
    """Exactly one check per list item."""

    contains: str | None = Field(None, description="the output contains this text (case-insensitive)")
    not_contains: str | None = Field(None, description="the output does not contain this text")
    regex: str | None = Field(None, description="the output matches this regular expression")
    json_schema: dict[str, Any] | None = Field(None, description="the output parses as JSON valid here")
    tool_call: ToolCallExpect | None = Field(None, description="the run called this tool")
    action: str | None = Field(None, description="the output, as JSON, has `action` equal to this")
    judge: str | None = Field(None, description="an LLM judge says the output meets this rubric")

    @model_validator(mode="after")
    def _one(self) -> Expectation:
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                "each expectation has exactly one check (contains, not_contains, regex, json_schema, "
                f"tool_call, action or judge); this one has {', '.join(given) or 'none'}"
            )
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        return value

    @property
    def kind(self) -> str:
        return next(k for k, v in self.model_dump().items() if v is not None)


class Case(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    split: Split = "train"
    input: dict[str, Any]
    expect: list[Expectation] = Field(min_length=1)
    note: str = ""


class Suite(_Strict):
    version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    role: str = Field(min_length=1, description="the prompt role this suite evolves")
    workflow: str = Field("agent", description="the workflow each case runs (inputs = case.input)")
    output: str | None = Field(None, description="the workflow output checked; default the final output")
    description: str = ""
    cases: list[Case] = Field(default_factory=list)

    def split(self, name: str) -> list[Case]:
        return [c for c in self.cases if c.split == name]

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise NotFoundError(f"suite {self.name!r} has no case {case_id!r}")

    @property
    def hash(self) -> str:
        """What the suite asks, as a hash recorded with every score (changes when a case does)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def user_dir(home: Path) -> Path:
    return Path(home) / "evolve" / "suites"


def suite_names(home: Path) -> list[str]:
    names = {p.stem for d in (SHIPPED, user_dir(home)) if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def load_suite(home: Path, name: str) -> Suite:
    """The suite `name`: the shipped file and the user's (same name: cases merged), then each
    `<name>.d/*.yaml` case file in name order. ConfigError names the file and line of a problem."""
    headers = [d / f"{name}.yaml" for d in (SHIPPED, user_dir(home)) if (d / f"{name}.yaml").is_file()]
    if not headers:
        known = ", ".join(suite_names(home)) or "none"
        raise NotFoundError(f"no suite {name!r}; suites: {known} (add {user_dir(home)}/{name}.yaml)")
    suite: Suite | None = None
    for path in headers:
        part = _parse(path, Suite)
        if part.name != name:
            raise ConfigError(f"{path}:1: name: {part.name!r} differs from the file name; make it {name!r}")
        if suite is None:
            suite = part
            continue
        for key in ("role", "workflow", "output"):
            if getattr(part, key) != getattr(suite, key):
                raise ConfigError(
                    f"{path}: {key}: {getattr(part, key)!r} differs from {getattr(suite, key)!r} in "
                    f"{headers[0]}; a user suite that extends a shipped one keeps its {key}"
                )
        suite.cases.extend(part.cases)
    assert suite is not None
    for directory in (SHIPPED, user_dir(home)):
        extra = directory / f"{name}.d"
        if extra.is_dir():
            suite.cases.extend(_parse(p, Case) for p in sorted(extra.glob("*.yaml")))
    seen: set[str] = set()
    for case in suite.cases:
        if case.id in seen:
            raise ConfigError(f"suite {name!r}: case id {case.id!r} appears twice; case ids must be unique")
        seen.add(case.id)
    return suite


def validate_all(home: Path) -> dict[str, Suite | ConfigError]:
    """Every suite by name: loaded, or the error that says what to fix."""
    out: dict[str, Suite | ConfigError] = {}
    for name in suite_names(home):
        try:
            out[name] = load_suite(home, name)
        except ConfigError as exc:
            out[name] = exc
    return out


def _parse(path: Path, model: type[M]) -> M:
    return parse_text(path.read_text(encoding="utf-8"), model, str(path))


def parse_text(text: str, model: type[M], source: str) -> M:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(
            f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}:1: a {model.__name__.lower()} file must be a YAML mapping")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            line = _line_of(node, loc)
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key; remove it or check its spelling (see docs/evolve.md)"
            elif error["type"] == "missing":
                message = "required key is missing; add it"
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            lines.append(f"{source}:{line or 1}: {dotted}: {message}")
        raise ConfigError(f"invalid {model.__name__.lower()}\n  " + "\n  ".join(lines)) from None
