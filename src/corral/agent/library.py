"""The workflow library: shipped workflows, the user's own (`$CORRAL_HOME/workflows`), and every
version of each kept in the run store so a past run can be resumed or replayed exactly."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from corral.agent.graph import CompiledWorkflow, WorkflowError, load_workflow
from corral.agent.schema import NAME_PATTERN
from corral.agent.store import RunStore
from corral.errors import BadRequestError, NotFoundError
from corral.paths import atomic_write_text

SHIPPED = resources.files("corral") / "workflows"


@dataclass(frozen=True)
class Definition:
    name: str
    text: str
    source: str  # shipped | user | saved


class WorkflowLibrary:
    def __init__(self, store: RunStore, user_dir: Path | None = None, *, shipped: bool = True) -> None:
        self.store = store
        self.user_dir = user_dir
        self.shipped = shipped
        self._compiled: dict[tuple[str, int], CompiledWorkflow] = {}

    def definitions(self) -> dict[str, Definition]:
        found: dict[str, Definition] = {}
        if self.shipped:
            for entry in sorted(SHIPPED.iterdir(), key=lambda e: e.name):
                if entry.name.endswith(".yaml"):
                    name = entry.name.removesuffix(".yaml")
                    found[name] = Definition(name, entry.read_text(encoding="utf-8"), "shipped")
        if self.user_dir is not None and self.user_dir.is_dir():
            for path in sorted(self.user_dir.glob("*.yaml")):
                found[path.stem] = Definition(path.stem, path.read_text(encoding="utf-8"), "user")
        return found

    def get(self, name: str, version: int | None = None) -> tuple[CompiledWorkflow, int]:
        """The compiled workflow: a stored version, or (None) the current definition, stored as
        a new version if it changed."""
        if version is None:
            definition = self.definitions().get(name)
            if definition is not None:
                version = self.store.save_workflow(name, definition.text)
            else:
                latest = self.store.workflow(name)
                if latest is None:
                    known = ", ".join(sorted(self.definitions())) or "none"
                    raise NotFoundError(f"no workflow {name!r}; the workflows are: {known}")
                version = latest[0]
        key = (name, version)
        if key not in self._compiled:
            stored = self.store.workflow(name, version)
            if stored is None:
                raise NotFoundError(f"workflow {name!r} has no version {version}")
            compiled = load_workflow(stored[1], name)
            if compiled.name != name:
                # Runs record the workflow by name; a mismatch could never be resumed or replayed.
                raise WorkflowError(
                    [
                        f"the file {name}.yaml says `name: {compiled.name}`; make the name and the file "
                        "name the same"
                    ],
                    name,
                )
            self._compiled[key] = compiled
        return self._compiled[key], version

    def text(self, name: str, version: int | None = None) -> tuple[str, int]:
        _, number = self.get(name, version)
        stored = self.store.workflow(name, number)
        assert stored is not None
        return stored[1], number

    def save(self, text: str, name: str | None = None) -> tuple[CompiledWorkflow, int]:
        """Validate and save a definition as the user's; returns it and its new version."""
        workflow = load_workflow(text, name or "workflow")
        if name is not None and workflow.name != name:
            raise BadRequestError(
                f"the definition is named {workflow.name!r} but is saved as {name!r}; make `name:` match"
            )
        if not re.match(NAME_PATTERN, workflow.name):
            raise WorkflowError(
                [
                    f"bad workflow name {workflow.name!r}: use letters, digits, '.', '_' or '-', starting "
                    "with a letter or digit"
                ]
            )
        if self.user_dir is not None:
            atomic_write_text(self.user_dir / f"{workflow.name}.yaml", text)
        version = self.store.save_workflow(workflow.name, text)
        self._compiled[(workflow.name, version)] = workflow
        return workflow, version

    def summaries(self) -> list[dict[str, Any]]:
        out = []
        for name, definition in sorted(self.definitions().items()):
            try:
                workflow, version = self.get(name)
                out.append({
                    "name": name, "description": workflow.spec.description, "source": definition.source,
                    "version": version, "nodes": len(workflow.nodes),
                    "inputs": {k: v.model_dump() for k, v in workflow.spec.inputs.items()},
                    "valid": True,
                })  # fmt: skip
            except WorkflowError as exc:
                out.append(
                    {"name": name, "source": definition.source, "valid": False, "problems": exc.problems}
                )
        return out
