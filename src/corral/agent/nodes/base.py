"""The Node seam: a node type's ports, parameters and branches (the editor's metadata) and the
one async method that runs it; plus the registry of types by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from corral.agent.schema import PortType

if TYPE_CHECKING:
    from corral.agent.services import AgentServices


@dataclass(frozen=True)
class Port:
    name: str
    type: PortType = "any"
    description: str = ""
    required: bool = True
    default: Any = None

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "description": self.description,
            "required": self.required,
            "default": self.default,
        }


class NodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class NodeResult:
    outputs: dict[str, Any]
    branch: str | None = None  # which outgoing `when` edges fire (edges without `when` always do)


class NodeFailure(Exception):
    """A node could not do its job; the message says why and what to change."""


@dataclass
class NodeContext:
    """What a running node may use: its identity, the services and the event stream."""

    run_id: str
    node_id: str
    session: str
    services: AgentServices
    emit: Callable[[str, dict[str, Any]], None]
    iteration: int = 0  # how many times this node ran before in this run
    attempt: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def token(self, text: str) -> None:
        """Stream a piece of generated text to the UI, the API and voice."""
        self.emit("node.token", {"text": text})


class NodeType:
    """Subclass, set the class attributes and implement `run`; register with @register."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    category: ClassVar[str] = "core"
    inputs: ClassVar[tuple[Port, ...]] = ()
    outputs: ClassVar[tuple[Port, ...]] = ()
    branches: ClassVar[tuple[str, ...]] = ()  # labels its `when` edges may use
    dynamic_inputs: ClassVar[bool] = False  # any extra input name is accepted (templates, outputs)
    dynamic_outputs: ClassVar[bool] = False
    Params: ClassVar[type[NodeParams]] = NodeParams

    def branch_labels(self, params: NodeParams) -> tuple[str, ...] | None:
        """The branches this configured node can emit; None when they cannot be known in advance."""
        return self.branches

    def output_ports(self, params: NodeParams) -> tuple[Port, ...] | None:
        """Output ports of this configured node; None when any name may appear."""
        return None if self.dynamic_outputs else self.outputs

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: Any) -> NodeResult:
        raise NotImplementedError

    @classmethod
    def metadata(cls) -> dict[str, Any]:
        return {
            "type": cls.name,
            "title": cls.title or cls.name,
            "description": cls.description,
            "category": cls.category,
            "inputs": [p.metadata() for p in cls.inputs],
            "outputs": [p.metadata() for p in cls.outputs],
            "branches": list(cls.branches),
            "dynamic_inputs": cls.dynamic_inputs,
            "dynamic_outputs": cls.dynamic_outputs,
            "params": cls.Params.model_json_schema(),
        }


NODE_TYPES: dict[str, NodeType] = {}
_T = TypeVar("_T", bound=type[NodeType])


def register(cls: _T) -> _T:
    if cls.name in NODE_TYPES:
        raise ValueError(f"node type {cls.name!r} is registered twice")
    NODE_TYPES[cls.name] = cls()
    return cls


def node_types() -> dict[str, NodeType]:
    """All registered node types (importing the library modules registers them)."""
    import corral.agent.nodes.library  # noqa: F401  (registers the shipped types)

    return NODE_TYPES


def compatible(source: PortType, target: PortType) -> bool:
    """Whether a value of port type `source` may feed an input of type `target`."""
    if "any" in (source, target) or source == target:
        return True
    return (source, target) in {("integer", "number"), ("messages", "list"), ("list", "messages")}


def check_value(value: Any, port_type: PortType) -> bool:
    """Whether a runtime value has the port type."""
    if port_type == "any":
        return True
    if port_type == "string":
        return isinstance(value, str)
    if port_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if port_type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if port_type == "boolean":
        return isinstance(value, bool)
    if port_type in ("list", "messages"):
        return isinstance(value, list)
    return isinstance(value, dict)
