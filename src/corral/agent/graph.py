"""Loading and checking a workflow: YAML -> WorkflowSpec -> a compiled graph the runner executes.

Every problem names the node (or edge) and the fix; all problems are reported at once:
unknown node type, bad parameters, a missing, unknown or mistyped input, a reference to a node
that does not run first, a dangling edge or unknown branch, an unreachable node, and a cycle that
does not pass through a `loop` node (the only bounded way to go round).
"""

from __future__ import annotations

import difflib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from corral.agent.nodes.base import NodeParams, NodeType, Port, check_value, compatible, node_types
from corral.agent.schema import NodeSpec, PortType, WorkflowSpec, literal, parse_reference
from corral.errors import BadRequestError


class WorkflowError(BadRequestError):
    """The workflow definition is invalid; `problems` lists every problem found."""

    def __init__(self, problems: list[str], name: str = "workflow") -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"{name}: {problems[0]}{more}")


@dataclass(frozen=True)
class Binding:
    kind: str  # literal | inputs | vars | node
    name: str = ""  # the input / var / node name
    port: str | None = None  # the node's port, None for all of its outputs
    value: Any = None  # the literal


@dataclass(frozen=True)
class Edge:
    index: int
    source: str
    target: str
    when: str | None
    implicit: bool = False  # added from a data binding
    back: bool = False  # closes a loop: its target is a loop node that reaches its source


@dataclass
class CompiledNode:
    id: str
    spec: NodeSpec
    type: NodeType
    params: NodeParams
    bindings: dict[str, Binding]
    ports: dict[str, Port]  # the type's declared input ports
    out_edges: list[Edge] = field(default_factory=list)
    in_edges: list[Edge] = field(default_factory=list)
    is_loop: bool = False
    is_merge: bool = False

    @property
    def is_join(self) -> bool:
        """Runs once after all its inputs: a merge, or a dataflow node fed by several nodes."""
        return self.is_merge or (len(self.in_edges) > 1 and all(e.implicit for e in self.in_edges))


@dataclass
class CompiledWorkflow:
    spec: WorkflowSpec
    nodes: dict[str, CompiledNode]
    edges: list[Edge]
    starts: list[str]
    ancestors: dict[str, frozenset[str]]  # for join nodes: who can still reach them

    @property
    def name(self) -> str:
        return self.spec.name


def load_yaml(text: str, source: str = "workflow") -> WorkflowSpec:
    """Parse YAML text into a WorkflowSpec, with errors that say where and what to write."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise WorkflowError([f"invalid YAML{where}: {problem}"], source) from None
    if not isinstance(raw, dict):
        raise WorkflowError(["a workflow file must be a mapping with `name`, `nodes` and `edges`"], source)
    return parse_spec(raw, source)


def parse_spec(raw: dict[str, Any], source: str = "workflow") -> WorkflowSpec:
    version = raw.get("version", 1)
    if version != 1:
        raise WorkflowError([f"workflow version {version!r} is not supported; this corral reads version 1"])
    nodes = raw.get("nodes")
    if isinstance(nodes, dict):
        odd = [k for k in nodes if not isinstance(k, str)]
        if odd:
            raise WorkflowError([
                f"node id {odd[0]!r} is not a name: YAML reads yes/no/on/off/true/false and numbers "
                "as values; quote the id or pick another name"
            ], str(raw.get("name") or source))  # fmt: skip
    try:
        return WorkflowSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = ".".join(str(p) for p in error["loc"])
            hint = ""
            if isinstance(error.get("input"), bool) and "string" in error["msg"]:
                hint = " (YAML reads yes/no/on/off/true/false as booleans: quote the value)"
            problems.append(f"{loc}: {error['msg']}{hint}")
        raise WorkflowError(problems, str(raw.get("name") or source)) from None


def compile_workflow(spec: WorkflowSpec) -> CompiledWorkflow:
    """Check everything and build the graph; raise WorkflowError listing all problems."""
    problems: list[str] = []
    types = node_types()
    nodes: dict[str, CompiledNode] = {}
    for node_id, node in spec.nodes.items():
        node_type = types.get(node.type)
        if node_type is None:
            problems.append(
                f"node {node_id!r} has unknown type {node.type!r}{_suggest(node.type, types)}; "
                "GET /api/workflows/node-types lists the types"
            )
            continue
        try:
            params = node_type.Params.model_validate(node.params)
        except ValidationError as exc:
            for error in exc.errors():
                loc = ".".join(str(p) for p in error["loc"]) or "params"
                problems.append(f"node {node_id!r} ({node.type}): params.{loc}: {error['msg']}")
            continue
        bindings: dict[str, Binding] = {}
        for name, value in node.bindings.items():
            try:
                ref = parse_reference(value)
            except ValueError as exc:
                problems.append(f"node {node_id!r} input {name!r}: {exc}")
                continue
            if ref is None and isinstance(value, dict | list) and _refs_in(value):
                bindings[name] = Binding("struct", value=value)
            elif ref is None:
                bindings[name] = Binding("literal", value=literal(value))
            elif ref[0] in ("inputs", "vars"):
                if ref[1] is None:
                    problems.append(f"node {node_id!r} input {name!r}: write ${ref[0]}.NAME")
                    continue
                bindings[name] = Binding(ref[0], name=ref[1])
            else:
                bindings[name] = Binding("node", name=ref[0], port=ref[1])
        ports = {p.name: p for p in node_type.inputs}
        compiled = CompiledNode(node_id, node, node_type, params, bindings, ports)
        compiled.is_loop = node.type == "loop"
        compiled.is_merge = node.type == "merge"
        nodes[node_id] = compiled

    edges = _edges(spec, nodes, problems)
    for edge in edges:
        nodes[edge.source].out_edges.append(edge)
        nodes[edge.target].in_edges.append(edge)
    starts = [n for n, c in nodes.items() if not c.in_edges or _entered_only_from_inside(c, nodes)]
    back = _back_edges(nodes, starts) if not problems else set()
    _check_cycles(nodes, back, problems)
    if nodes and not starts and not problems:
        problems.append(
            "every node has an incoming edge, so nothing can start; remove the edge into the first node"
        )
    reached = _reachable(starts, nodes)
    for node_id in nodes:
        if node_id not in reached and not problems:
            problems.append(
                f"node {node_id!r} is unreachable: no path leads to it from a start node; "
                "add an edge into it or delete it"
            )
    if problems:
        raise WorkflowError(problems, spec.name)

    edges = [Edge(e.index, e.source, e.target, e.when, e.implicit, e.index in back) for e in edges]
    for c in nodes.values():
        c.out_edges = [e for e in edges if e.source == c.id]
        c.in_edges = [e for e in edges if e.target == c.id]
    ancestors_of = {n: frozenset(_ancestors(n, nodes)) for n in nodes}
    for c in nodes.values():
        _check_bindings(spec, c, nodes, ancestors_of[c.id], problems)
        _check_loop(c, nodes, problems)
    if problems:
        raise WorkflowError(problems, spec.name)
    merges = {n: ancestors_of[n] - {n} for n, c in nodes.items() if c.is_join}
    return CompiledWorkflow(spec, nodes, edges, starts, merges)


def load_workflow(text: str, source: str = "workflow") -> CompiledWorkflow:
    return compile_workflow(load_yaml(text, source))


# --- checks ----------------------------------------------------------------------------------


def _refs_in(value: Any) -> list[tuple[str, str | None]]:
    """The references inside a literal object or list (e.g. `{url: $inputs.url}`)."""
    found: list[tuple[str, str | None]] = []
    if isinstance(value, dict):
        for item in value.values():
            found.extend(_refs_in(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_refs_in(item))
    else:
        ref = parse_reference(value)
        if ref is not None:
            found.append(ref)
    return found


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _edges(spec: WorkflowSpec, nodes: dict[str, CompiledNode], problems: list[str]) -> list[Edge]:
    edges: list[Edge] = []
    seen: set[tuple[str, str, str | None]] = set()
    for i, edge in enumerate(spec.edges):
        bad = False
        for end, name in (("from", edge.source), ("to", edge.target)):
            if name not in spec.nodes:
                problems.append(
                    f"edge {i} ({edge.source} -> {edge.target}) is dangling: its `{end}` names no node "
                    f"{name!r}{_suggest(name, spec.nodes)}"
                )
                bad = True
        if bad or edge.source not in nodes or edge.target not in nodes:
            continue
        source = nodes[edge.source]
        labels = source.type.branch_labels(source.params)
        if labels is not None:
            allowed = (*labels, "error") if source.spec.on_error == "branch" else labels
            if edge.when is not None and edge.when not in allowed:
                hint = f"; its branches are: {', '.join(allowed)}" if allowed else "; it has no branches"
                problems.append(
                    f"edge {edge.source} -> {edge.target}: node {edge.source!r} never emits branch "
                    f"{edge.when!r}{hint}"
                )
        if source.is_loop and edge.when is None:
            problems.append(
                f"edge {edge.source} -> {edge.target}: edges out of loop {edge.source!r} need "
                "`when: body` (each iteration) or `when: done` (after the last)"
            )
        key = (edge.source, edge.target, edge.when)
        if key not in seen:
            seen.add(key)
            edges.append(Edge(len(edges), edge.source, edge.target, edge.when))
    # Pure dataflow: a node with no explicit incoming edge runs after the nodes it reads.
    targets = {e.target for e in edges}
    for node_id, node in nodes.items():
        if node_id in targets:
            continue
        sources = [b.name for b in node.bindings.values() if b.kind == "node"]
        sources += [r[0] for b in node.bindings.values() if b.kind == "struct" for r in _refs_in(b.value)]
        for source_id in sources:
            if source_id in nodes and source_id != node_id:
                key = (source_id, node_id, None)
                if key not in seen:
                    seen.add(key)
                    edges.append(Edge(len(edges), source_id, node_id, None, implicit=True))
    return edges


def _back_edges(nodes: dict[str, CompiledNode], starts: list[str]) -> set[int]:
    """Edges that close a cycle, found by depth-first search from the start nodes."""
    back: set[int] = set()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for root in [*starts, *nodes]:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(nodes[root].out_edges))]
        while stack:
            node_id, edges = stack[-1]
            edge = next(edges, None)
            if edge is None:
                state[node_id] = 2
                stack.pop()
                continue
            seen = state.get(edge.target)
            if seen == 1:
                back.add(edge.index)
            elif seen is None:
                state[edge.target] = 1
                stack.append((edge.target, iter(nodes[edge.target].out_edges)))
    return back


def _check_cycles(nodes: dict[str, CompiledNode], back: set[int], problems: list[str]) -> None:
    """Every cycle must be entered at a `loop` node: that is what bounds it."""
    for node in nodes.values():
        for edge in node.out_edges:
            if edge.index in back and not nodes[edge.target].is_loop:
                cycle = _cycle_through(edge, nodes)
                problems.append(
                    f"nodes {' -> '.join(cycle)} form a cycle with no loop bound; route it through a "
                    f"`loop` node (params: max_iterations): the edge {edge.source} -> {edge.target} "
                    "should go into the loop node, whose `body` branch leads on"
                )


def _cycle_through(edge: Edge, nodes: dict[str, CompiledNode]) -> list[str]:
    """A path target -> ... -> source, closed by `edge`, for the error message."""
    parents: dict[str, str] = {}
    queue = deque([edge.target])
    while queue:
        n = queue.popleft()
        if n == edge.source:
            break
        for e in nodes[n].out_edges:
            if e.target not in parents and e.target != edge.target:
                parents[e.target] = n
                queue.append(e.target)
    path = [edge.source]
    while path[-1] != edge.target and path[-1] in parents:
        path.append(parents[path[-1]])
    return [*reversed(path), edge.target]


def _entered_only_from_inside(node: CompiledNode, nodes: dict[str, CompiledNode]) -> bool:
    """A loop whose only incoming edges come back from its own body starts the run."""
    if not node.is_loop:
        return False
    inside = _reachable([e.target for e in node.out_edges], nodes)
    return all(e.source in inside for e in node.in_edges)


def _reachable(starts: Iterable[str], nodes: dict[str, CompiledNode], avoid: str | None = None) -> set[str]:
    seen: set[str] = set()
    queue = deque(starts)
    while queue:
        n = queue.popleft()
        if n in seen or n == avoid:
            continue
        seen.add(n)
        queue.extend(e.target for e in nodes[n].out_edges)
    return seen


def _ancestors(node_id: str, nodes: dict[str, CompiledNode]) -> set[str]:
    seen: set[str] = set()
    queue = deque(e.source for e in nodes[node_id].in_edges)
    while queue:
        n = queue.popleft()
        if n in seen:
            continue
        seen.add(n)
        queue.extend(e.source for e in nodes[n].in_edges)
    return seen


def _check_loop(node: CompiledNode, nodes: dict[str, CompiledNode], problems: list[str]) -> None:
    if not node.is_loop:
        return
    done = [e.target for e in node.out_edges if e.when == "done"]
    after = _reachable(done, nodes, avoid=node.id)
    for edge in node.in_edges:
        if edge.back and edge.source in after:
            problems.append(
                f"loop {node.id!r}: its `done` branch leads back into it through {edge.source!r}, "
                "which would run forever; end the done branch outside the loop"
            )


def _check_bindings(
    spec: WorkflowSpec,
    node: CompiledNode,
    nodes: dict[str, CompiledNode],
    ancestors: frozenset[str],
    problems: list[str],
) -> None:
    label = f"node {node.id!r} ({node.spec.type})"
    declared_vars = set(spec.vars) | {v for n in spec.nodes.values() for v in (*n.set, *n.append)}
    for name, binding in node.bindings.items():
        port = node.ports.get(name)
        if port is None and not node.type.dynamic_inputs:
            known = ", ".join(node.ports) or "none"
            problems.append(f"{label} has no input {name!r}{_suggest(name, node.ports)}; its inputs: {known}")
            continue
        want: PortType = port.type if port else "any"
        have: PortType | None = None
        if binding.kind == "struct":
            for ref_name, ref_port in _refs_in(binding.value):
                if ref_name == "inputs" and ref_port not in spec.inputs:
                    problems.append(f"{label} input {name!r} reads $inputs.{ref_port}, which is not declared")
                elif ref_name == "vars" and ref_port not in declared_vars:
                    problems.append(f"{label} input {name!r} reads $vars.{ref_port}, which no node sets")
                elif ref_name not in ("inputs", "vars") and ref_name not in ancestors:
                    problems.append(
                        f"{label} input {name!r} reads ${ref_name}, which does not run before it; add an "
                        f"edge (or a path) from {ref_name} to {node.id}"
                    )
            have = "list" if isinstance(binding.value, list) else "object"
            if not compatible(have, want):
                problems.append(f"{label} input {name!r} must be {want}, but its binding gives {have}")
            continue
        if binding.kind == "literal":
            if not check_value(binding.value, want):
                problems.append(
                    f"{label} input {name!r} must be {want}, got {type(binding.value).__name__} "
                    f"{binding.value!r}"
                )
            continue
        if binding.kind == "inputs":
            if binding.name not in spec.inputs:
                known = ", ".join(spec.inputs) or "none"
                problems.append(
                    f"{label} input {name!r} reads $inputs.{binding.name}, which the workflow does not "
                    f"declare under `inputs:` (declared: {known})"
                )
                continue
            have = spec.inputs[binding.name].type
        elif binding.kind == "vars":
            if binding.name not in declared_vars:
                problems.append(
                    f"{label} input {name!r} reads $vars.{binding.name}, which no node sets; declare it "
                    "under `vars:` or add `set:`/`append:` to the node that produces it"
                )
            continue
        else:
            source = nodes.get(binding.name)
            if source is None:
                problems.append(
                    f"{label} input {name!r} reads ${binding.name}, but there is no node "
                    f"{binding.name!r}{_suggest(binding.name, nodes)}"
                )
                continue
            if binding.name not in ancestors:
                problems.append(
                    f"{label} input {name!r} reads ${binding.name} but {binding.name!r} does not run "
                    f"before it; add an edge (or a path) from {binding.name} to {node.id}"
                )
                continue
            if binding.port is None:
                have = "object"
            else:
                outputs = source.type.output_ports(source.params)
                if outputs is not None:
                    by_name = {p.name: p for p in outputs}
                    if binding.port not in by_name and binding.port != "error":
                        known = ", ".join(by_name) or "none"
                        problems.append(
                            f"{label} input {name!r} reads ${binding.name}.{binding.port}, but a "
                            f"{source.spec.type} node has no output {binding.port!r}"
                            f"{_suggest(binding.port, by_name)}; its outputs: {known}"
                        )
                        continue
                    have = by_name[binding.port].type if binding.port in by_name else "string"
        if have is not None and not compatible(have, want):
            problems.append(f"{label} input {name!r} must be {want}, but its binding gives {have}")
    for port in node.ports.values():
        if port.required and port.default is None and port.name not in node.bindings:
            problems.append(
                f"{label} is missing its required input {port.name!r} ({port.type}); bind it under `in:`"
            )
    outputs = node.type.output_ports(node.params)
    if outputs is not None:
        names = {p.name for p in outputs} | {"error"}
        for kind, mapping in (("set", node.spec.set), ("append", node.spec.append)):
            for var, port_name in mapping.items():
                if port_name not in names:
                    problems.append(
                        f"{label} `{kind}: {{{var}: {port_name}}}` names no output of the node; "
                        f"its outputs: {', '.join(sorted(names))}"
                    )
