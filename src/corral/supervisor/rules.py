"""Known crash signatures, classified by rules before any model is asked.

The split: a signature whose cause and fix are certain (the kernel's OOM kill, an allocation
failure, a KV cache that does not fit, a segfault) gets its action from this table at once and
for free; everything else — repeated plain crashes, unknown exits, failed runs with odd errors —
goes to the reflection workflow, which may also answer "novel".

Runs and nodes have their own rows: a run cut off by a shutdown, or failed because its model was
briefly unavailable, is resumed ("restart"); a single run failing for its own reasons is only
recorded (a run is not broken infrastructure), repeated failures of one workflow go to
reflection. A lost node whose replicas all found another node is recorded; one whose experts
now fit nowhere is brought back ("restart": Wake-on-LAN).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corral.supervisor.actions import HealingAction, IncreaseMemory, ReduceContext, Restart
from corral.supervisor.diagnostics import Bundle

_ALLOC = re.compile(r"failed to allocate|out of memory|std::bad_alloc|cannot allocate memory", re.I)
_UNAVAILABLE = re.compile(
    r"every replica for|no healthy replica|ConnectError|RemoteProtocolError|ReadError|"
    r"HTTP 50[23]|connection (refused|reset)",
    re.I,
)
_CONTEXT = re.compile(
    r"kv.?cache|context size|n_ctx|exceeds the available context|context overflow|context shift", re.I
)


@dataclass(frozen=True)
class Verdict:
    kind: str  # oom_kill | alloc_failure | context_overflow | segfault | crash | repeated_crash | ...
    action: HealingAction | None  # None: ask the reflection workflow
    reason: str
    needs_healing: bool = True  # False: a single plain crash, which the Engine's restart covers


def last_run(log_tail: str) -> str:
    """The part of a replica's log written by its last start: its log is appended across restarts,
    and a line from an earlier run must not decide what ended this one."""
    lines = log_tail.splitlines()
    starts = [i for i, line in enumerate(lines) if "llama_server: initializing" in line]
    return "\n".join(lines[starts[-1] :] if starts else lines)


def classify(bundle: Bundle, repeat_threshold: int = 3) -> Verdict:
    if bundle.source == "run":
        return _classify_run(bundle, repeat_threshold)
    if bundle.source == "node":
        return _classify_node(bundle)
    tail = last_run(bundle.log_tail)
    if _ALLOC.search(tail) and _CONTEXT.search(tail):
        reason = "an allocation for the context (KV cache) failed: a smaller context needs less memory"
        return Verdict("context_overflow", ReduceContext(reason=reason), reason)
    if _ALLOC.search(tail):
        if bundle.memory.limit_bytes is not None:
            reason = "an allocation failed under the replica's memory limit: raise the limit"
            return Verdict("alloc_failure", IncreaseMemory(reason=reason), reason)
        reason = "an allocation failed with no limit set: the machine is short of memory, use less"
        return Verdict("alloc_failure", ReduceContext(reason=reason), reason)
    if bundle.signal == "SIGKILL":
        reason = "killed by SIGKILL without corral asking: the kernel's OOM killer; use less memory"
        return Verdict("oom_kill", ReduceContext(reason=reason), reason)
    if bundle.signal == "SIGSEGV" or bundle.exit_code == 139:
        if bundle.crashes_in_window <= 1:
            reason = "a first segfault: restart once and watch whether it recurs"
            return Verdict("segfault", Restart(reason=reason), reason)
        return Verdict("segfault", None, "a segfault that recurs: ask reflection")
    if bundle.crashes_in_window >= repeat_threshold:
        return Verdict("repeated_crash", None, "a crash that restarts did not fix: ask reflection")
    reason = "a single crash: the Engine restarts it with backoff"
    return Verdict("crash", Restart(reason=reason), reason, needs_healing=False)


def _classify_run(bundle: Bundle, repeat_threshold: int) -> Verdict:
    if bundle.spec.get("status") == "interrupted":
        reason = "the run was cut off by a shutdown: resume it from its last completed step"
        return Verdict("run_interrupted", Restart(reason=reason), reason)
    if _UNAVAILABLE.search(bundle.detail):
        reason = "the run failed because its model was unavailable for a moment: resume it"
        return Verdict("run_model_unavailable", Restart(reason=reason), reason)
    if bundle.crashes_in_window >= repeat_threshold:
        return Verdict("repeated_run_failure", None, "runs of this workflow keep failing: ask reflection")
    reason = "a single failed run: recorded (its error is in the run's history)"
    return Verdict("run_failed", None, reason, needs_healing=False)


def _classify_node(bundle: Bundle) -> Verdict:
    unplaced = bundle.spec.get("unplaced") or []
    if unplaced:
        reason = f"{', '.join(unplaced)} fit on no other node: bring the node back"
        return Verdict("node_lost", Restart(reason=reason), reason)
    moved = bundle.spec.get("moved") or {}
    where = ", ".join(f"{r} to {n}" for r, n in sorted(moved.items()))
    reason = f"its replicas were re-placed ({where})" if where else "it held no replicas"
    return Verdict("node_lost", None, reason, needs_healing=False)
