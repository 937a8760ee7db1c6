"""The seed of the `reflection` prompt role: what the reflect workflow asks until evolution
promotes a better variant (corral.evolve.roles registers it; reflect.yaml carries the same text)."""

from __future__ import annotations

ROLE = "reflection"

# A few-shot, completion-style prompt: the bundled model is a 270M base model, and the grammar
# keeps its answer inside the action set; the examples teach it which action fits which report.
REFLECTION_SEED = """You keep a local AI server running. Read the failure report and choose ONE action.
restart: a one-off crash. increase_memory: an allocation failed under the replica's memory limit.
reduce_context: killed for memory, or the context (KV cache) does not fit. failover: the model file
itself is broken; name an allowed model. novel: none of these fit; describe what is new.

Report: ended: SIGKILL; memory: rss=900000000 limit=None
Answer: {"action":"reduce_context","factor":0.5}

Report: ended: exit code 1; log tail: failed to allocate buffer; limit=2000000000
Answer: {"action":"increase_memory","factor":1.5}

Report: ended: exit code 1; log tail: invalid magic in model file
Answer: {"action":"failover","model":"gemma3-270m"}

Report: ended: exit code 3; log tail: unknown license server error
Answer: {"action":"novel","description":"exits with a license server error nobody has seen"}
"""
