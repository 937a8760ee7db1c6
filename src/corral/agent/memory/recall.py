"""Recalled memories rendered for a prompt, one line each behind its citation ("[m3] ...")."""

from __future__ import annotations

from collections.abc import Sequence

from corral.agent.memory.longterm import Recollection


def format_recollections(recollections: Sequence[Recollection]) -> str:
    """One `[m3] Alice's birthday is 3 May` line per memory, best first; "" when none was recalled.

    Newlines inside a memory are folded to spaces so each memory stays one citable line.
    """
    return "\n".join(f"{r.cite} {' '.join(r.text.split())}" for r in recollections)
